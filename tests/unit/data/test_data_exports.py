"""The README's import path works, and importing the readers does not import Lance or Ray."""

import subprocess
import sys


def test_readers_are_exported_without_importing_lance_or_ray():
    code = ("import sys\nfrom avatar4d.data import EncodedShardReader, LanceShardReader\n"
            "assert LanceShardReader.__module__ == 'avatar4d.data.reader'\n"
            "print(sorted(m for m in ('lance', 'ray') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
