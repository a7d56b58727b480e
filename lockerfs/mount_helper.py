"""`mount.fuse.lockerfs`: what mount(8) runs for `mount -t fuse.lockerfs` and /etc/fstab lines.

mount(8) calls `mount.fuse.lockerfs LOCKER MOUNTPOINT [-sfnv] [-o OPTIONS]`;
we turn the -o options we know into `lockerfs mount` flags and ignore the
generic ones mount(8) itself handles (noauto, user, _netdev, ...).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lockerfs import cli

VALUE_OPTIONS = {"cache_size": "--cache-size", "cache_dir": "--cache-dir", "endpoint_url": "--endpoint-url",
                 "layout": "--layout", "refresh": "--refresh", "memory_cache": "--memory-cache", "names": "--names"}
FLAG_OPTIONS = {"allow_other": "--allow-other", "debug": "--debug", "foreground": "--foreground",
                "page_cache": "--page-cache"}
GENERIC_OPTIONS = {"rw", "ro", "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group",
                   "_netdev", "nofail", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime",
                   "noatime", "relatime", "sync", "async"}


class HelperError(ValueError):
    pass


def translate(argv: Sequence[str]) -> list[str]:
    """mount(8)-style arguments -> `lockerfs mount` arguments."""
    positional: list[str] = []
    options: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            options.extend(next(args, "").split(","))
        elif arg.startswith("-o"):
            options.extend(arg[2:].split(","))
        elif arg in ("-s", "-f", "-n", "-v"):
            continue  # sloppy, fake, no-mtab, verbose: nothing for us to do
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise HelperError("usage: mount.fuse.lockerfs LOCKER MOUNTPOINT [-o OPTIONS]")
    flags: list[str] = []
    for option in filter(None, options):
        name, has_value, value = option.partition("=")
        if name in VALUE_OPTIONS and has_value:
            flags += [VALUE_OPTIONS[name], value]
        elif name in FLAG_OPTIONS and not has_value:
            flags.append(FLAG_OPTIONS[name])
        elif name == "profile" and has_value:
            os.environ["AWS_PROFILE"] = value
        elif name in GENERIC_OPTIONS or name.startswith(("x-", "comment")):
            continue
        else:
            raise HelperError(f"unknown mount option {option!r}")
    return ["mount", *flags, *positional]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        arguments = translate(sys.argv[1:] if argv is None else argv)
    except HelperError as exc:
        print(f"mount.fuse.lockerfs: {exc}", file=sys.stderr)
        return 2
    return cli.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
