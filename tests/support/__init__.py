"""Test support: real network namespaces, real charon daemons, the QEMU lab.

Import as ``from support.netns import netns`` (pytest puts ``tests/`` on ``sys.path``
because ``tests/`` has a conftest and no ``__init__.py``).

``support.netns`` — throwaway namespaces, never the host's own:
    ``netns(prefix) -> ContextManager[Netns]``  fresh namespace, ``lo`` up, always deleted
    ``veth(a, "va", b, "vb")``                   veth pair created directly in a and b
    ``Netns.run(*cmd) / .ip(*args) / .sysctl(k, v) / .add_address(dev, cidr) / .argv(*cmd)``
    ``check_test_address(cidr)``                 raises unless in a TEST-NET / doc range

``support.charon`` — one real charon per namespace:
    ``running(ns, workdir) -> ContextManager[Charon]``  started, VICI answering, stopped by PID
    ``Charon(ns, workdir, plugins=…, extra={...})``     ``.start() .stop() .restart()``
        ``.uri`` (for swanctl) ``.vici_socket`` ``.log_file`` ``.pid`` ``.log_tail()``
    own strongswan.conf (STRONGSWAN_CONF), private tmpfs /run (own mount namespace), filelog

``support.swanctl`` — a hand-written far-end peer:
    ``Conn(name, local_addrs, remote_addrs, local_id, remote_id, psk, children=[Child(...)])``
    ``Child(name, local_ts, remote_ts, mark=N | if_id=N | neither (policy-based), ...)``
    ``render(conns) -> str``  ``write_and_load(ns, uri, path, conns)``  ``load(ns, uri, path)``
    ``initiate(ns, uri, child, ike=…)``  ``list_sas(ns, uri)``  ``wait_for(ns, uri, ike=, child=)``
    ``ike_states(text)`` / ``child_states(text)`` parse ``--list-sas`` output

``support.lab`` — run a command in a QEMU guest with a real IPsec kernel:
    ``run_in_guest(command, timeout=…, net=UserNet(...)) -> GuestResult``
        ``.output .returncode .accel ("kvm"|"tcg") .boot_seconds .wall_seconds``
    The pytest plugin in ``tests/lab/conftest.py`` runs ``lab``-marked tests through it.

``support.sites`` — the reference two-site topology (namespaces, veth, charons) that
the lab's reference scenario and routevpn's end-to-end test share.

On this host (no ESP/VTI in the kernel) namespaces, charon and IKE SAs work; CHILD
SAs, VTI/XFRM interfaces and traffic need the lab.
"""
