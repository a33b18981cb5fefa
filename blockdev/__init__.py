"""blockdev: block backends behind one async interface (``BlockBackend``): a raw file, host
memory, and qcow2 images with backing files; opened from a spec string by ``open_disk``; frozen
into a snapshot directory and opened from one again (``freeze``, ``open_frozen``)."""

from blockdev._base import SECTOR, BlockBackend, BlockError, BlockIOError
from blockdev.freeze import BaseFile, FrozenDisk, freeze, open_frozen, sync_frozen
from blockdev.memory import MemoryDisk
from blockdev.open import DiskSpec, detect_format, open_disk, parse_disk_spec
from blockdev.qcow2 import Qcow2Image, create_image, create_qcow2, image_info, open_image
from blockdev.raw import RawFile, create_raw

__all__ = [
    "SECTOR",
    "BaseFile",
    "BlockBackend",
    "BlockError",
    "BlockIOError",
    "DiskSpec",
    "FrozenDisk",
    "MemoryDisk",
    "Qcow2Image",
    "RawFile",
    "create_image",
    "create_qcow2",
    "create_raw",
    "detect_format",
    "freeze",
    "image_info",
    "open_disk",
    "open_frozen",
    "open_image",
    "parse_disk_spec",
    "sync_frozen",
]
