"""blockdev: block backends (file, memory, copy-on-write) behind one async interface.

Roadmap step 3 (see ../shared/VISION.md); nothing is implemented yet.
"""

__all__: list[str] = []
