"""The core library must import with torch + numpy alone (GPU boxes and Serve replicas)."""

import subprocess
import sys
import textwrap

BLOCKED = ["ray", "deepspeed", "lance", "mlflow", "diffusers", "transformers", "open_clip", "lpips", "pyarrow"]


def test_core_imports_without_distributed_dependencies():
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {BLOCKED!r}:
                    raise ImportError('blocked for this test: ' + name)
                return None
        sys.meta_path.insert(0, Block())
        import avatar4d
        failures = []
        for mod in pkgutil.walk_packages(avatar4d.__path__, 'avatar4d.'):
            try:
                importlib.import_module(mod.name)
            except Exception as exc:
                failures.append(f'{{mod.name}}: {{exc!r}}')
        print('\\n'.join(failures))
        sys.exit(1 if failures else 0)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
