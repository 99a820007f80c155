"""The agent's knobs (flags of `routevpn agent`), as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass, field

from routevpn.agent import status as st
from routevpn.agent.budget import DEFAULT_STATUS_BURST, DEFAULT_STATUS_QPS
from routevpn.agent.eventlimit import DEFAULT_EVENT_INTERVAL
from routevpn.agent.traffic import TrafficPolicy


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """The agent's knobs (flags of `routevpn agent`)."""

    node: str
    namespace: str
    resync_seconds: float = 30.0
    counters_period: float = st.DEFAULT_COUNTERS_PERIOD
    traffic: TrafficPolicy = field(default_factory=TrafficPolicy)
    #: Seconds between two TrafficFlowing Events of one tunnel.
    event_interval: float = DEFAULT_EVENT_INTERVAL
    status_qps: float = DEFAULT_STATUS_QPS
    status_burst: int = DEFAULT_STATUS_BURST
    #: Clamp TCP MSS on routevpn's interfaces (routevpn's own nftables table).
    mss_clamp: bool = True
