"""The agent's knobs (flags of `routevpn agent`), as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass, field

from routevpn.agent import status as st
from routevpn.agent.budget import DEFAULT_STATUS_BURST, DEFAULT_STATUS_QPS
from routevpn.agent.eventlimit import DEFAULT_EVENT_INTERVAL
from routevpn.agent.traffic import TrafficPolicy
from routevpn.api.bgp import DEFAULT_LOCAL_ASN
from routevpn.dataplane.bird_config import DEFAULT_KERNEL_METRIC
from routevpn.dataplane.plan import IPNetwork


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
    #: BIRD's control socket (None: BGP is not enabled on this node's release).
    bird_socket: str | None = None
    #: The directory of the bird.conf BIRD runs; the agent's only writable node directory.
    bird_config_dir: str = "/run/routevpn/bird"
    #: BGP: this end's AS number for tunnels that leave spec.bgp.localASN out.
    bgp_local_asn: int = DEFAULT_LOCAL_ASN
    #: BGP: the kernel metric of every route the node's BIRD installs (BirdSettings).
    bgp_kernel_metric: int = DEFAULT_KERNEL_METRIC
    #: The cluster's networks (pod, service, node, API server) no BGP session may learn a
    #: route into, on top of what the agent always protects (`safety.bgp_forbidden`).
    protected: tuple[IPNetwork, ...] = ()
    #: Clamp TCP MSS on routevpn's interfaces (routevpn's own nftables table).
    mss_clamp: bool = True
