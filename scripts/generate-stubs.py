"""Write sparkml_ext/__init__.pyi, the type stub of the public API, from the declared Params (run after adding or
changing a Param or an exported class; a test fails while the checked-in stub is stale)."""

from pathlib import Path

from sparkml_ext.ml.signatures import render_stub

if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "sparkml_ext" / "__init__.pyi"
    target.write_text(render_stub())
    print(f"wrote {target}")
