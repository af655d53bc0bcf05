"""Export: a bundle of N archived messages (RSMF, DAT/OPT, JSONL, Parquet, HTML, proofs, signed
manifest), wall time and the exporter's peak RSS, against DuckDB `COPY` of the same message rows
from the sealed Parquet in SeaweedFS to JSONL (no decryption, no proofs, no other formats).

    python bench/export.py [--messages 1000000]

The messages arrive as a busy number's history import (2,000 contacts, six months), so the bundle
has thousands of conversations and one RSMF per conversation per month (or day). The export runs
as its own process (`strongroom export`), measured with wait4 (its CPU time includes the slip-sheet
helper process); run it at two sizes to see memory stay flat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from _common import PROCESS_PENDING, REPO, child_env, commit_history, env_database_url, peak_rss_mb, temp_archive
from audit.query import _sql_str, extension_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--period", choices=["day", "month"], default="month",
                    help="one RSMF per conversation per day or month (a day makes ~1 file per message here)")
    args = ap.parse_args()
    with temp_archive(env_database_url()) as archive, tempfile.TemporaryDirectory(prefix="sr-export-") as tmp:
        t0 = time.perf_counter()
        env = child_env(archive)
        commit_history(env, args.messages, 1000)
        subprocess.run([sys.executable, "-c", PROCESS_PENDING], env=env, cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        t_ingest = time.perf_counter() - t0
        launcher_mb = peak_rss_mb()

        out = Path(tmp) / "bundle"
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "strongroom.cli", "export", "--out", str(out), "--matter",
                                  "bench", "--requested-by", "bench", "--period", args.period], env=env, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        t_export = time.perf_counter() - t0
        assert os.waitstatus_to_exitcode(status) == 0, "export failed"
        made = json.loads(child.stdout.read())  # type: ignore[union-attr]
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())

        pub = Path(tmp) / "pub.pem"
        pub.write_text(subprocess.run([sys.executable, "-m", "strongroom.cli", "keys", "public"], env=env, cwd=REPO,
                                      check=True, capture_output=True, text=True).stdout)
        t0 = time.perf_counter()
        checker = subprocess.Popen([sys.executable, "-m", "strongroom.cli", "verify-bundle", str(out),
                                    "--public-key", str(pub)], env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        _, status, vusage = os.wait4(checker.pid, 0)
        t_verify = time.perf_counter() - t0
        assert os.waitstatus_to_exitcode(status) == 0, "the bundle did not verify"

        con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        con.execute(f"LOAD {_sql_str(str(extension_path()))}")
        ak, sk = archive.store.credentials
        endpoint = str(archive.store.endpoint_url).split("://", 1)[1]
        con.execute(f"CREATE SECRET s3 (TYPE s3, KEY_ID {_sql_str(ak or '')}, SECRET {_sql_str(sk or '')}, "
                    f"ENDPOINT {_sql_str(endpoint)}, URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')")
        t0 = time.perf_counter()
        glob = _sql_str(f"s3://{archive.store.bucket}/records/*/*/*.parquet")
        target = _sql_str(str(Path(tmp) / "peer.jsonl"))
        con.execute(f"COPY (SELECT * FROM read_parquet({glob}, hive_partitioning = true) WHERE kind = 'message') "
                    f"TO {target} (FORMAT JSON)")
        t_peer = time.perf_counter() - t0
    c = made["counts"]
    print(f"{args.messages:,} messages ingested in {t_ingest:.0f} s; RSMF per conversation per {args.period}; "
          f"bundle: {c['messages']:,} messages, "
          f"{c['records']:,} records, {c['rsmf_files']:,} RSMF files, {c['documents']:,} documents, {size / 1e6:.0f} MB")
    print(f"  strongroom export (all formats + proofs + signed manifest): {t_export:8.1f} s, "
          f"{c['records'] / t_export:,.0f} records/s, peak RSS {usage.ru_maxrss / 1024:.0f} MB, "
          f"CPU {usage.ru_utime + usage.ru_stime:.0f} s (this launcher's own peak: {launcher_mb:.0f} MB)")
    print(f"  verify-bundle (offline; decrypts and checks every record): {t_verify:8.1f} s, "
          f"peak RSS {vusage.ru_maxrss / 1024:.0f} MB")
    print(f"  peer: DuckDB COPY of the message rows to JSONL           : {t_peer:8.1f} s")
    print(f"  ratio (peer time / export time)                          : {t_peer / t_export:8.3f}x")


if __name__ == "__main__":
    main()
