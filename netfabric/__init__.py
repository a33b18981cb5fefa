"""netfabric: frames, the learning switch, ports (VM, TAP, capture), pcap.

Roadmap step 4 (see ../shared/VISION.md); nothing is implemented yet.
"""

__all__: list[str] = []
