{{/*
Object names. Kubernetes limits many names to 63 characters (DNS-1123 labels: Services,
label values such as app.kubernetes.io/instance), so every name is cut to 63 and a
trailing "-" left by the cut is removed.
*/}}
{{- define "routevpn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "routevpn.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"<base>-<suffix>" in 63 characters. The base is cut, never the suffix: cutting the end
would make "<long release>-routevpn-operator" and "...-agent" the same name.
Call with (dict "base" "..." "suffix" "...").
*/}}
{{- define "routevpn.suffixed" -}}
{{- $max := sub 62 (len .suffix) | int }}
{{- printf "%s-%s" (.base | trunc $max | trimSuffix "-") .suffix }}
{{- end }}

{{- define "routevpn.componentName" -}}
{{- include "routevpn.suffixed" (dict "base" (include "routevpn.fullname" .root) "suffix" .component) }}
{{- end }}

{{- define "routevpn.operatorName" -}}
{{- include "routevpn.componentName" (dict "root" . "component" "operator") }}
{{- end }}

{{- define "routevpn.agentName" -}}
{{- include "routevpn.componentName" (dict "root" . "component" "agent") }}
{{- end }}

{{- define "routevpn.charonName" -}}
{{- include "routevpn.componentName" (dict "root" . "component" "charon") }}
{{- end }}

{{/* charon's whole strongswan.conf: the value, or the chart's file. */}}
{{- define "routevpn.strongswanConf" -}}
{{- default (.Files.Get "files/strongswan.conf") .Values.charon.strongswanConf }}
{{- end }}

{{/*
The node's directory holding charon's VICI socket, shared by the release's charon and
agent pods (hostPath) and by nothing else: one per release (namespace and name), so two
releases never reach each other's charon. Mounted at /run/routevpn in both pods.
*/}}
{{- define "routevpn.viciHostDir" -}}
{{- printf "/run/routevpn/%s/%s" .Release.Namespace .Release.Name }}
{{- end }}

{{/* Where the agent runs: its own namespace when asked for, else the release's. */}}
{{- define "routevpn.agentNamespace" -}}
{{- default .Release.Namespace .Values.agent.namespace }}
{{- end }}

{{- define "routevpn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The one labels helper: app.kubernetes.io/* on every object. Call with
(dict "root" $ "component" "operator"|"agent"|"") .
*/}}
{{- define "routevpn.labels" -}}
helm.sh/chart: {{ include "routevpn.chart" .root }}
{{ include "routevpn.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: routevpn
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
charon's pod template labels: the selector's and the stable ones only. The chart's and
the app's version change with every release; in the template they would make a
RollingUpdate of charon (which re-keys every tunnel of the node) follow each chart upgrade.
*/}}
{{- define "routevpn.charonPodLabels" -}}
{{ include "routevpn.selectorLabels" (dict "root" . "component" "charon") }}
app.kubernetes.io/part-of: routevpn
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The immutable subset used in selectors (a Deployment's selector can't change later). */}}
{{- define "routevpn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "routevpn.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* image reference: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "routevpn.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "routevpn.image" -}}
{{- include "routevpn.imageRef" (dict "root" . "image" .Values.image) }}
{{- end }}

{{- define "routevpn.charonImage" -}}
{{- include "routevpn.imageRef" (dict "root" . "image" .Values.charon.image) }}
{{- end }}

{{/* The agent's ServiceAccount as RBAC and admission policies name it. */}}
{{- define "routevpn.agentUser" -}}
{{- printf "system:serviceaccount:%s:%s" (include "routevpn.agentNamespace" .) (include "routevpn.agentName" .) }}
{{- end }}
