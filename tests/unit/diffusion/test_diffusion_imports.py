"""The diffusion package imports with torch alone; diffusers loads only when a scheduler is built."""

import subprocess
import sys
import textwrap


def test_importing_avatar4d_diffusion_does_not_import_diffusers():
    code = textwrap.dedent("""
        import sys
        import avatar4d.diffusion
        from avatar4d.diffusion import IDDPMObjective, sample
        assert "diffusers" not in sys.modules, "diffusers imported at module import time"
        IDDPMObjective()
        assert "diffusers" not in sys.modules, "the objective needs no diffusers"
        from avatar4d.diffusion import make_scheduler
        make_scheduler("ddim")
        assert "diffusers" in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
