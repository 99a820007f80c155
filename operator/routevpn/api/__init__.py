"""The VpnTunnel API: pydantic types, conditions and names. Pure: no I/O."""
