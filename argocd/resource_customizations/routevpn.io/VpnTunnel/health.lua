-- Argo CD health of a routevpn.io VpnTunnel, from its status conditions.
-- Healthy: Ready=True. Progressing: the controllers have not caught up with the spec yet,
-- or Ready is Unknown, or Ready=False for a reason that passes by itself. Degraded: Ready=False
-- for any other reason (a Secret missing, a conflict, a peer refusing...).
local hs = {}

-- Reasons of Ready=False that resolve without anyone acting: still on the way to Ready.
-- The same set as routevpn.api.conditions.TRANSIENT_REASONS (a test keeps them equal).
local transient = {
  Pending = true,
  Scheduling = true,
  Configuring = true,
  Connecting = true,
  Installing = true,
  WaitingForAgent = true,
  Stale = true,
}

local function describe(cond)
  local reason = cond.reason or ""
  local message = cond.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return "Ready is " .. tostring(cond.status)
end

local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local observed = obj.status.observedGeneration
if observed == nil or observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controllers to observe generation " .. tostring(generation)
  return hs
end

local ready = nil
if obj.status.conditions ~= nil then
  for _, cond in ipairs(obj.status.conditions) do
    if cond.type == "Ready" then
      ready = cond
    end
  end
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

if ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controllers to observe generation " .. tostring(generation)
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

if ready.status == "False" and not transient[ready.reason or ""] then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

-- Unknown (or anything not True/False), or False for a transient reason.
hs.status = "Progressing"
hs.message = describe(ready)
return hs
