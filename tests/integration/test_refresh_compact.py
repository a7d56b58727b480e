"""A mount's catalog refresh racing `lockerfs compact`: no track vanishes, every new one arrives.

Compaction with no grace period deletes journal files moments after folding them
into a snapshot, while the mount lists and fetches the same folders twice a
second. A reader that lost a file between its two listings would drop tracks
from the tree until the next refresh; a watcher polls the mount throughout.
"""

from __future__ import annotations

import subprocess
import threading
import time

from tests.support.library import assert_serves_sources, expected_paths, load_manifest, mounted_files
from tests.support.mounting import LOCKERFS, lockerfs, mounted, wait_until

from synth_library import write_manifest, write_track

LAPS = 4
REFRESH = "0.5"  # seconds: as many refreshes as the race can offer


def test_refresh_racing_compact_loses_nothing(tmp_path, locker, env) -> None:
    root = tmp_path / "lib"
    tracks = [write_track(root / f"{n:02d}.flac", "flac", seconds=0.5, seed=500 + n,
                          tags={"artist": "Racer", "album": "Laps", "title": f"Lap {n}", "track": n})
              for n in range(LAPS + 1)]
    write_manifest(root, tracks)
    layout = expected_paths(load_manifest(root))
    lockerfs("upload", str(tracks[0].path), locker, env=env)

    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache"), "--refresh", REFRESH) as mnt:
        seen: set[str] = set()
        vanished: list[str] = []
        compactions = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                now = set(mounted_files(mnt))
                vanished.extend(f"{name} at {time.monotonic():.2f}" for name in seen - now)
                seen.update(now)
                time.sleep(0.05)

        def compact_all_the_time() -> None:
            while not stop.is_set():
                done = subprocess.run([LOCKERFS, "compact", "--grace", "0", locker], env=env,
                                      capture_output=True, timeout=60)
                compactions.append(done.returncode)

        threads = [threading.Thread(target=watch), threading.Thread(target=compact_all_the_time)]
        for thread in threads:
            thread.start()
        try:
            for track in tracks[1:]:
                lockerfs("upload", str(track.path), locker, env=env)
        finally:
            arrived = wait_until(lambda: set(mounted_files(mnt)) == set(layout), timeout=20)
            stop.set()
            for thread in threads:
                thread.join(90)
        assert arrived, sorted(set(layout) - set(mounted_files(mnt)))
        assert not vanished, vanished
        assert compactions and set(compactions) == {0}, compactions
        assert_serves_sources(mounted_files(mnt), layout)
    lockerfs("compact", "--grace", "0", locker, env=env)
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache2")) as mnt:
        assert sorted(mounted_files(mnt)) == sorted(layout)
    print(f"\n[refresh vs compact] {LAPS} uploads while {len(compactions)} compactions ran; "
          f"{len(seen)} tracks seen, none vanished")
