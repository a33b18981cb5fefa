"""blockdev: block backends behind one async interface (``BlockBackend``): a raw file, host
memory, and qcow2 images with backing files; opened from a spec string by ``open_disk``."""

from blockdev._base import SECTOR, BlockBackend, BlockError, BlockIOError
from blockdev.memory import MemoryDisk
from blockdev.open import DiskSpec, detect_format, open_disk, parse_disk_spec
from blockdev.qcow2 import Qcow2Image, create_image, create_qcow2, image_info, open_image
from blockdev.raw import RawFile, create_raw

__all__ = [
    "SECTOR",
    "BlockBackend",
    "BlockError",
    "BlockIOError",
    "DiskSpec",
    "MemoryDisk",
    "Qcow2Image",
    "RawFile",
    "create_image",
    "create_qcow2",
    "create_raw",
    "detect_format",
    "image_info",
    "open_disk",
    "open_image",
    "parse_disk_spec",
]
