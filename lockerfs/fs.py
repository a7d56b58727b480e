"""pyfuse3 Operations: a thin adaptor from FUSE calls to the tree (names) and the cache (bytes).

Nothing here talks to the bucket. Only pyfuse3.FUSEError may leave an
operation (pyfuse3 ends the mount on anything else), so every failure is
mapped to an errno here, in one place, with one log line.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass

import pyfuse3

from lockerfs.cache import BlockCache, FetchError, ObjectRef
from lockerfs.prefetch import WHOLE_FILE_MAX, Prefetcher, ReadState, object_of
from lockerfs.tree import ROOT_INODE, DirNode, ExtraNode, FileNode, Node, Tree

log = logging.getLogger(__name__)

# Objects never change and the tree changes only on refresh, which
# invalidates what it changed; so the kernel may trust what we said for long.
ENTRY_TIMEOUT = 3600.0
ATTR_TIMEOUT = 3600.0
STATFS_BLOCK = 64 * 1024
# st_blksize: stdio and Python buffer this much per read. Small, so that a tag
# reader's last buffered read runs little past its tags (see prefetch.HEAD_SLACK).
IO_BLOCK = 16 * 1024
NAME_MAX = 255
# Extended attributes (getfattr -d): a file's object, how much of it this machine
# holds, whether it is pinned; on the root, the control socket (control.py).
XATTR_SHA256 = "user.lockerfs.sha256"
XATTR_CACHED = "user.lockerfs.cached"  # bytes held in memory or on disk
XATTR_PINNED = "user.lockerfs.pinned"
XATTR_CONTROL = "user.lockerfs.control"


class FailedReads:
    """Logs failed reads without flooding the log: offline, every uncached read fails, and a
    player retries. The first failure is logged, then at most one line per LOG_EVERY seconds
    saying how many more there were (each one is still logged at DEBUG)."""

    LOG_EVERY = 60.0

    def __init__(self) -> None:
        self._logged_at = -self.LOG_EVERY
        self._unlogged = 0

    def note(self, name: str, offset: int, error: Exception) -> None:
        now = time.monotonic()
        if now - self._logged_at < self.LOG_EVERY:
            self._unlogged += 1
            log.debug("read of %s at %d failed: %s", name, offset, error)
            return
        more = f" ({self._unlogged} more reads failed since the last such line)" if self._unlogged else ""
        log.warning("read of %s at %d failed: %s%s", name, offset, error, more)
        self._logged_at, self._unlogged = now, 0


@dataclass
class OpenFile:
    node: FileNode | ExtraNode
    reading: ReadState | None  # None: not a track, nothing for prefetch to follow


class LockerOperations(pyfuse3.Operations):
    """Read-only operations over a Tree that mount.py replaces on refresh."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree, cache: BlockCache, prefetcher: Prefetcher, *, direct_io: bool = True,
                 control_socket: bytes | None = None) -> None:
        super().__init__()
        self.tree = tree
        self.cache = cache
        self.prefetcher = prefetcher
        self.direct_io = direct_io
        self.control_socket = control_socket
        self.uid, self.gid = os.getuid(), os.getgid()
        self._handles: dict[int, OpenFile] = {}
        self._failures = FailedReads()
        self._dir_handles: dict[int, DirNode] = {}
        self._next_handle = itertools.count(1)

    # --- names and attributes -------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.tree.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        attrs.entry_timeout = ENTRY_TIMEOUT
        attrs.attr_timeout = ATTR_TIMEOUT
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.st_blksize = IO_BLOCK
        if isinstance(node, DirNode):
            attrs.st_mode = stat.S_IFDIR | 0o555
            attrs.st_nlink = 2 + node.subdirs
            attrs.st_size = 4096
            mtime = node.mtime
        else:  # a track or another file: FileNode.size and .mtime read the catalog's columns
            attrs.st_mode = stat.S_IFREG | 0o444
            attrs.st_nlink = 1
            attrs.st_size = node.size
            mtime = node.mtime
        attrs.st_blocks = (attrs.st_size + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = int(mtime * 1e9)
        return attrs

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if name == b".":
            return self.attributes(parent)
        if name == b"..":
            return self.attributes(self._node(parent.parent))
        node = self.tree.lookup(parent_inode, os.fsdecode(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(node)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attributes(self._node(inode))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if not isinstance(node, DirNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        handle = next(self._next_handle)
        self._dir_handles[handle] = node  # the listing stays consistent if the tree is replaced
        return handle

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory = self._dir_handles[fh]
        names = directory.names
        for index in range(start_id, len(names)):
            node = self.tree.entry(directory, index)
            if node is None:
                continue  # removed by a refresh while listing
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), self.attributes(node), index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = STATFS_BLOCK
        data.f_blocks = (self.tree.total_size + STATFS_BLOCK - 1) // STATFS_BLOCK
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.tree.nodes)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = NAME_MAX
        return data

    # --- bytes ------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if isinstance(node, DirNode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if isinstance(node, ExtraNode):
            handle = next(self._next_handle)
            self._handles[handle] = OpenFile(node, None)
            return pyfuse3.FileInfo(fh=handle, keep_cache=True)  # its content never changes under one inode
        try:
            reading = self.prefetcher.opened(node)
        except Exception:  # prefetch is an optimisation: a bug there must not cost the open
            log.exception("prefetch failed on opening %s", node.name)
            reading = ReadState(node)
        handle = next(self._next_handle)
        self._handles[handle] = OpenFile(node, reading)
        # direct_io: every read reaches us as the reader made it, so prefetch
        # can tell a tag scan from playback by what is read (the kernel's own
        # read-ahead would fetch up to 256 KiB past the tags of every track and
        # look like playback). Re-reads come from our memory cache instead of
        # the page cache. See docs/DESIGN-NOTES.md for the trade-offs (mmap).
        return pyfuse3.FileInfo(fh=handle, keep_cache=True, direct_io=self.direct_io)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        opened = self._handles.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if not isinstance(opened.node, FileNode) or opened.reading is None:
            return await self._read_extra(opened.node, off, size)
        try:
            self.prefetcher.read(opened.reading, off, size)
        except Exception:  # prefetch is an optimisation: a bug there must not cost the read
            log.exception("prefetch failed reading %s at %d", opened.node.name, off)
        began = time.monotonic()
        try:
            return await self.cache.read(object_of(opened.node.track), off, size)
        except FetchError as exc:
            self._failures.note(opened.node.name, off, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:  # a bug must cost one read, not the whole mount (pyfuse3 would end it)
            log.exception("unexpected error reading %s at %d", opened.node.name, off)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            self.prefetcher.served(opened.reading)
            log.debug("read %s at %d, %d bytes: %.1f ms", opened.node.name, off, size,
                      (time.monotonic() - began) * 1000)

    async def _read_extra(self, node: FileNode | ExtraNode, off: int, size: int) -> bytes:
        """A cover, image or lyrics file comes through the block cache as a track does, the
        whole of it in the GET of its first miss (it is read whole: one round trip); a cue
        sheet or playlist is bytes made at layout time."""
        if isinstance(node.content, bytes):
            return node.content[off:off + size]
        whole = node.content.size if node.content.size <= WHOLE_FILE_MAX else None
        try:
            return await self.cache.read(node.content, off, size, fetch_to=whole)
        except FetchError as exc:
            self._failures.note(node.name, off, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:  # a bug must cost one read, not the whole mount (pyfuse3 would end it)
            log.exception("unexpected error reading %s at %d", node.name, off)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh: int) -> None:
        opened = self._handles.pop(fh, None)
        if opened is not None and opened.reading is not None:
            self.prefetcher.released(opened.reading)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if name not in self._xattr_names(node):  # `ls -l` asks every file for ACLs and labels
            raise pyfuse3.FUSEError(errno.ENODATA)
        return self._xattr(node, name)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self._xattr_names(self._node(inode))

    def _xattr_names(self, node: Node) -> list[bytes]:
        """What getfattr shows; names only: a value (how much is cached) is worked out only
        when asked for, since `ls -l` lists the names of every file it shows."""
        if isinstance(node, DirNode):
            return [XATTR_CONTROL.encode()] if node.inode == ROOT_INODE and self.control_socket is not None else []
        if not isinstance(node.content, ObjectRef):  # a cue sheet or playlist made from the catalog
            return []
        return [XATTR_SHA256.encode(), XATTR_CACHED.encode(), XATTR_PINNED.encode()]

    def _xattr(self, node: Node, name: bytes) -> bytes:
        """One of the node's _xattr_names, from the tables alone (no request, no disk I/O)."""
        if isinstance(node, DirNode):
            assert self.control_socket is not None
            return self.control_socket
        obj = node.content
        assert isinstance(obj, ObjectRef)
        if name == XATTR_SHA256.encode():
            return obj.sha256.encode()
        if name == XATTR_CACHED.encode():
            return str(self.cache.cached_bytes(obj)).encode()
        return b"yes" if self.cache.is_pinned(obj) else b"no"
