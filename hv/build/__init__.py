"""Things hv builds and caches: the zig build cache (``_zig``), the bundled firmware guests
(``_guests``) and the Linux guest image (``_image_linux``).
"""
