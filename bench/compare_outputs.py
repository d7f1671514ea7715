"""Whether two versions of the code give the same alerts and snapshots, byte for byte.

A refactor that should change nothing is checked with this: each version is
built on its own (its sources from git, its compiled modules built by pip
into a directory of its own, cached by the source tree's hash), then
`stream-detector backtest --events` replays, with the default settings:

- the outage-dev corpora (`../shared/data/outage-dev/corpus-*.events.jsonl.gz`);
- the simulator's seeds 1, 2 and 3 (30 services, 21 days, as
  `bench/detection.py` makes them), each version simulating its own file,
  which is compared too.

Of each replay it keeps the alert messages, the detector's snapshot at the
end of the input (open buckets, clock, reporter filter, models, incidents)
and its snapshot after the closing flush, and compares them with the other
version's: identical, or the first difference (the first differing alert
line, or the first differing field of the snapshot's document). The exit
status is 0 when everything is identical, 1 otherwise.

    .venv/bin/python bench/compare_outputs.py [BEFORE [AFTER]] [--seeds 1 2 3]
        [--data ../shared/data/outage-dev] [--only corpus-11 seed-1] [--keep DIR]

BEFORE defaults to `main`, AFTER to the working tree (tracked and untracked
files that git does not ignore, uncommitted changes included). Either may be
any commit or `worktree`. The versions run under this interpreter's installed
dependencies, so the two must not need different ones; what a version may
change is its own code. The replay goes through `stream_detector.cli.main`,
with `stream_detector.backtest.PartitionDetector` wrapped to take the
snapshots (`stream_detector.core.snapshot.encode(detector, model)`): a
version that renames those cannot be compared by this script as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside a checkout, or beside the directory of worktrees holding it.
DEFAULT_DATA = next((p / "shared" / "data" / "outage-dev" for p in ROOT.parents[:2]
                     if (p / "shared" / "data" / "outage-dev").is_dir()),
                    ROOT.parent / "shared" / "data" / "outage-dev")
CACHE = Path(tempfile.gettempdir()) / "stream-detector-compare"
WORKTREE = "worktree"
SNAPSHOT_MAGIC = b"SDS1"

# Run by each version's build, one process per input: simulate (for a seed),
# then the backtest command, recording the detector it makes.
DRIVER = r'''
import sys
from pathlib import Path

site, kind, source, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
import stream_detector
if not Path(stream_detector.__file__).resolve().is_relative_to(Path(site).resolve()):
    sys.exit(f"stream_detector came from {stream_detector.__file__}, not from {site}")
import stream_detector.backtest as backtest
from stream_detector.cli import main
from stream_detector.core import snapshot

if kind == "seed":
    from stream_detector.sim import simulate, write_jsonl
    _, _, reports = simulate(30, 21.0, int(source))
    write_jsonl(reports, out / "events.jsonl")
    source = str(out / "events.jsonl")

made = []


class Recorded(backtest.PartitionDetector):
    def __init__(self, config):
        super().__init__(config)
        made.append(self)

    def flush(self):
        (out / "end.snapshot").write_bytes(snapshot.encode(self, self.config.model))
        return super().flush()


backtest.PartitionDetector = Recorded
status = main(["backtest", "--events", source, "--output", str(out / "alerts.jsonl")])
if status or len(made) != 1:
    sys.exit(f"backtest ended with status {status}, having made {len(made)} detectors")
(out / "flushed.snapshot").write_bytes(snapshot.encode(made[0], made[0].config.model))
'''

OUTPUTS = ("events.jsonl", "alerts.jsonl", "end.snapshot", "flushed.snapshot")


@dataclass(frozen=True)
class Version:
    name: str
    tree: str  # the git tree of its sources

    @property
    def site(self) -> Path:
        return CACHE / self.tree / "site"


def git(*args: str, env: dict | None = None) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def resolve(name: str) -> Version:
    """The source tree of a commit, or of the working tree as it is now."""
    if name != WORKTREE:
        return Version(name, git("rev-parse", f"{name}^{{tree}}"))
    # A scratch index, so the real one (and what is staged) stays as it is.
    with tempfile.TemporaryDirectory(prefix="compare-index-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git("read-tree", "HEAD", env=env)
        git("add", "--all", ".", env=env)
        return Version(name, git("write-tree", env=env))


def build(version: Version) -> None:
    """Install the version's package (compiled modules too) into its own directory,
    unless an earlier run did; its dependencies are this interpreter's."""
    done = CACHE / version.tree / "built"
    if done.exists():
        print(f"{version.name}: reusing the build of tree {version.tree[:12]}", file=sys.stderr)
        return
    print(f"{version.name}: building tree {version.tree[:12]} ...", file=sys.stderr)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compare-src-") as src:
        archive = subprocess.run(["git", "archive", version.tree], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
        if version.site.exists():
            subprocess.run(["rm", "-rf", str(version.site)], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--no-compile", "--target", str(version.site), src], check=True)
    done.write_text(version.name + "\n")
    print(f"{version.name}: built in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def replay(version: Version, kind: str, source: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as driver:
        driver.write(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(version.site)}
    try:
        with (out / "backtest.log").open("w") as log:
            subprocess.run([sys.executable, driver.name, str(version.site), kind, source,
                            str(out)], env=env, cwd=out, stderr=log, check=True)
    except subprocess.CalledProcessError:
        sys.exit(f"{version.name}: the replay of {source} failed; see {out / 'backtest.log'}")
    finally:
        os.unlink(driver.name)


def first_alert_difference(a: bytes, b: bytes) -> str:
    lines_a, lines_b = a.splitlines(), b.splitlines()
    for n, (x, y) in enumerate(zip(lines_a, lines_b, strict=False), 1):
        if x != y:
            try:
                where = first_difference(orjson.loads(x), orjson.loads(y))
            except orjson.JSONDecodeError:
                where = None
            return (f"line {n}, {where or 'same JSON, other bytes'}:\n"
                    f"    - {x.decode(errors='replace')[:400]}\n"
                    f"    + {y.decode(errors='replace')[:400]}")
    return f"{len(lines_a)} lines against {len(lines_b)}; the shorter is a prefix of the longer"


def first_difference(a: object, b: object, path: str = "") -> str | None:
    """Where two JSON documents first differ, as a path and both values."""
    if type(a) is not type(b):
        return f"{path or '/'}: {short(a)} against {short(b)}"
    if isinstance(a, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{path}/{key}: only in {'the first' if key in a else 'the second'}"
            found = first_difference(a[key], b[key], f"{path}/{key}")
            if found:
                return found
        if list(a) != list(b):
            return f"{path or '/'}: same keys in another order"
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = first_difference(x, y, f"{path}/{i}")
            if found:
                return found
        if len(a) != len(b):
            return f"{path or '/'}: {len(a)} items against {len(b)}"
        return None
    return None if a == b else f"{path or '/'}: {short(a)} against {short(b)}"


def short(value: object) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def snapshot_difference(a: bytes, b: bytes) -> str:
    try:
        doc_a, doc_b = (orjson.loads(zlib.decompress(x[len(SNAPSHOT_MAGIC):])) for x in (a, b))
    except (zlib.error, orjson.JSONDecodeError) as exc:
        return f"cannot read a snapshot to compare ({exc})"
    found = first_difference(doc_a, doc_b)
    return found or "the documents are equal; only their encoding differs"


def compare(name: str, a: Path, b: Path) -> str | None:
    """None if the two files hold the same bytes, else what differs first."""
    if not a.exists() and not b.exists():
        return None
    if not a.exists() or not b.exists():
        return f"{name}: made by only one of the versions"
    x, y = a.read_bytes(), b.read_bytes()
    if x == y:
        return None
    if name.endswith(".snapshot"):
        return f"{name}: {snapshot_difference(x, y)}"
    return f"{name}: {first_alert_difference(x, y)}"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", nargs="?", default="main",
                        help="commit, or `worktree` (default: main)")
    parser.add_argument("after", nargs="?", default=WORKTREE,
                        help="commit, or `worktree` (default: the working tree)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="directory of corpus-*.events.jsonl.gz")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--only", nargs="*", metavar="INPUT",
                        help="only these inputs (corpus-11, seed-1, ...)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the outputs in DIR instead of a temporary directory")
    args = parser.parse_args()

    versions = [resolve(args.before), resolve(args.after)]
    corpora = sorted(args.data.glob("corpus-*.events.jsonl.gz"))
    if not corpora:
        print(f"--data {args.data} holds no corpus-*.events.jsonl.gz", file=sys.stderr)
        return 2
    inputs: list[tuple[str, str, str]] = [
        (events.name.split(".")[0], "events", str(events)) for events in corpora
    ] + [(f"seed-{seed}", "seed", str(seed)) for seed in args.seeds]
    if args.only:
        inputs = [item for item in inputs if item[0] in args.only]
        if not inputs:
            print(f"--only {' '.join(args.only)} names no input", file=sys.stderr)
            return 2
    for version in versions:
        build(version)
    if versions[0].tree == versions[1].tree:
        print(f"note: {versions[0].name} and {versions[1].name} have the same sources",
              file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        out_dir = args.keep or Path(tmp)
        differences: list[str] = []
        print(f"| input | {versions[0].name} | {versions[1].name} | "
              "alerts, end snapshot, flushed snapshot (sha256) |")
        print("|---|---|---|---|")
        for label, kind, source in inputs:
            outs = []
            for side, version in zip(("before", "after"), versions, strict=True):
                print(f"{version.name}: replaying {label} ...", file=sys.stderr)
                started = time.perf_counter()
                replay(version, kind, source, out_dir / label / side)
                outs.append((out_dir / label / side, time.perf_counter() - started))
            found = [d for d in (compare(name, outs[0][0] / name, outs[1][0] / name)
                                 for name in OUTPUTS) if d]
            differences += [f"{label}, {d}" for d in found]
            digests = ", ".join(digest(outs[1][0] / name) for name in OUTPUTS[1:])
            verdict = "identical" if not found else "DIFFERENT"
            print(f"| {label} | {outs[0][1]:.0f} s | {outs[1][1]:.0f} s | {verdict}: "
                  f"{digests} |", flush=True)
    if differences:
        print("\nfirst differences:")
        for difference in differences:
            print(f"- {difference}")
        return 1
    print(f"\n{versions[0].name} ({versions[0].tree[:12]}) and {versions[1].name} "
          f"({versions[1].tree[:12]}): alerts and snapshots byte-identical on all "
          f"{len(inputs)} inputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
