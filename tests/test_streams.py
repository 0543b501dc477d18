"""Input streams: folders of real PNG/JPEG files (local and memory://), tensors, windows, Lightning."""

import io
import os
import uuid
import warnings
from datetime import datetime, timezone

import fsspec
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader

from relmon.data import load_sample, to_tensor
from relmon.data.fashion_mnist import MEAN, STD
from relmon.data.streams import (
    DECODE_ERROR,
    NON_FINITE,
    SIZE_MISMATCH,
    TOO_LARGE,
    BadInputWarning,
    BadSample,
    ImageFolderStream,
    ResizedInputWarning,
    StreamDataModule,
    TensorStream,
    _decode,
    _decode_pil,
    _mtime,
    collate_skip_bad,
    fashion_mnist_stream,
    is_empty_batch,
    iter_windows,
    window_indices,
)
from relmon.models.preprocessing import Preprocessing

IMAGES = load_sample()[0][:6]
# relative path → (source image index, format); nested folders on purpose.
LAYOUT = {
    "a/0.png": (0, "PNG"),
    "a/1.png": (1, "PNG"),
    "b/c/2.jpg": (2, "JPEG"),
    "b/3.jpeg": (3, "JPEG"),
    "4.PNG": (4, "PNG"),
    "b/c/5.png": (5, "PNG"),
}
BAD = ("a/corrupt.png", "b/truncated.jpg")


def encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def folder_files() -> dict[str, bytes]:
    files = {rel: encode(IMAGES[i], fmt) for rel, (i, fmt) in LAYOUT.items()}
    files["a/corrupt.png"] = np.random.default_rng(0).bytes(400)
    jpeg = encode(IMAGES[0], "JPEG")
    files["b/truncated.jpg"] = jpeg[: len(jpeg) // 2]
    files["b/notes.txt"] = b"not an image"
    return files


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    for rel, data in folder_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def memory_root():
    fs = fsspec.filesystem("memory")
    base = f"/relmon-test-{uuid.uuid4().hex}"
    for rel, data in folder_files().items():
        fs.pipe(f"{base}/{rel}", data)
    yield fs, base
    fs.rm(base, recursive=True)


def run_loader(ds, batch_size=3, **kwargs):
    """All batches of a DataLoader over ds: good items by id, plus the bad ids and their count."""
    good, bad_ids, n_bad = {}, [], 0
    for batch in DataLoader(ds, batch_size=batch_size, collate_fn=collate_skip_bad, **kwargs):
        n_bad += batch["n_bad"]
        bad_ids += batch["bad_ids"]
        if is_empty_batch(batch):
            continue
        assert batch["x"].shape[0] == len(batch["sample_id"]) == len(batch["window_id"])
        for sid, x in zip(batch["sample_id"], batch["x"], strict=True):
            assert sid not in good
            good[sid] = x
    return good, bad_ids, n_bad


def check_pixels(good: dict, id_of):
    for rel, (i, fmt) in LAYOUT.items():
        x = good[id_of(rel)]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        pixels = (x[0] * 255).round().to(torch.uint8).numpy()
        diff = np.abs(pixels.astype(int) - IMAGES[i].astype(int))
        if fmt == "PNG":
            assert diff.max() == 0, rel
        else:
            assert diff.mean() < 1.5 and diff.max() <= 12, (rel, diff.mean(), diff.max())  # quality 95


def test_folder_decodes_good_and_counts_bad(folder):
    ds = ImageFolderStream(folder)
    assert len(ds) == 8  # six images, two bad ones; notes.txt ignored
    assert ds.sample_ids == sorted(ds.sample_ids)
    with pytest.warns(BadInputWarning) as record:
        good, bad_ids, n_bad = run_loader(ds)
    messages = " ".join(str(w.message) for w in record)
    assert "corrupt.png" in messages and "truncated.jpg" in messages
    assert n_bad == 2 and sorted(bad_ids) == sorted(str(folder / rel) for rel in BAD)
    assert set(good) == {str(folder / rel) for rel in LAYOUT}
    check_pixels(good, lambda rel: str(folder / rel))
    assert ds.n_bad == 2 and ds.errors == {DECODE_ERROR: 2}
    assert set(ds.bad_files) == {str(folder / rel) for rel in BAD}


@pytest.mark.filterwarnings("ignore::relmon.data.streams.BadInputWarning")
def test_folder_items_and_options(folder):
    ds = ImageFolderStream(folder, channels=3)
    item = ds[ds.sample_ids.index(str(folder / "a/0.png"))]
    assert set(item) == {"x", "sample_id", "index", "window_id", "label"}
    assert item["label"] == -1 and item["window_id"] == "default:0"
    assert item["x"].shape == (3, 28, 28) and torch.equal(item["x"][0], item["x"][2])
    assert torch.equal(item["x"][1], torch.from_numpy(IMAGES[0]).float() / 255)
    bad = ds[ds.sample_ids.index(str(folder / "a/corrupt.png"))]
    assert isinstance(bad, BadSample) and bad.reason == DECODE_ERROR and bad.sample_id.endswith("corrupt.png")

    # RGB file read as grey: ITU-R 601 luma of the colours.
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    (folder / "rgb.png").write_bytes(encode(rgb, "PNG"))
    grey = ImageFolderStream(folder)[ImageFolderStream(folder).sample_ids.index(str(folder / "rgb.png"))]
    assert abs(float(grey["x"].mean()) * 255 - 0.299 * 200) <= 1.0
    (folder / "rgb.png").unlink()

    prep = Preprocessing(mean=MEAN, std=STD)
    ds = ImageFolderStream(folder, preprocessing=prep, image_size=14, transform=lambda x: x * 2)
    x = ds[ds.sample_ids.index(str(folder / "a/1.png"))]["x"]
    raw = torch.from_numpy(IMAGES[1]).float()[None, None] / 255
    small = torch.nn.functional.interpolate(raw, size=(14, 14), mode="bilinear", antialias=True)
    assert x.shape == (1, 14, 14)
    torch.testing.assert_close(x, 2 * (small[0] - MEAN) / STD)


def test_all_bad_batch_still_carries_its_count():
    bad = [BadSample("s3://b/x.png", 3, "default:0", DECODE_ERROR, "RuntimeError: nope"), None]
    batch = collate_skip_bad(bad)
    assert is_empty_batch(batch) and batch["x"] is None and batch["sample_id"] == []
    assert batch["n_bad"] == 2 and batch["bad_ids"] == ["s3://b/x.png"] and batch["bad_reasons"] == [DECODE_ERROR]


def test_memory_folder_with_mtime_windows(memory_root):
    fs, base = memory_root
    # memory:// reports only a creation time; set it per file so they span three hourly windows.
    for rel in fs.find(base):
        hour = 1 if "/a/" in rel else 2 if "/b/" in rel else 3
        fs.store[rel].created = datetime(2024, 5, 1, hour, 30, tzinfo=timezone.utc)
    ds = ImageFolderStream(f"memory://{base}", window="mtime", window_seconds=3600, stream="cam")
    assert all(sid.startswith("memory://") for sid in ds.sample_ids)
    with pytest.warns(BadInputWarning) as record:
        good, bad_ids, n_bad = run_loader(ds, batch_size=4)
    assert sorted(str(w.message).split()[1] for w in record) == sorted(f"memory://{base}/{r}" for r in BAD)
    assert n_bad == 2 and sorted(bad_ids) == sorted(f"memory://{base}/{rel}" for rel in BAD)
    check_pixels(good, lambda rel: f"memory://{base}/{rel}")

    windows = window_indices(ds)
    assert list(windows) == [f"cam:2024-05-01T0{h}:00:00Z" for h in (1, 2, 3)]
    assert [len(v) for v in windows.values()] == [3, 4, 1]  # a/: 0,1,corrupt; b/: 2,3,5,truncated; 4.PNG
    for wid, idx in windows.items():
        assert all(ds.window_id(i) == wid for i in idx)


def test_local_mtime_windows(folder):
    hour = 3600
    t0 = 1_700_000_000 // hour * hour  # 2023-11-14T22:00:00Z
    for k, rel in enumerate(sorted(LAYOUT)):
        os.utime(folder / rel, (t0 + k * 1000, t0 + k * 1000))  # 0, 1000, … 5000 s after t0
    ds = ImageFolderStream(folder, extensions=("png", ".JPG", ".jpeg"), window="mtime", window_seconds=hour)
    assert len(ds) == 6 + 2
    for rel in BAD:
        os.utime(folder / rel, (t0, t0))
    ds = ImageFolderStream(folder, window="mtime", window_seconds=hour)
    windows = window_indices(ds)
    assert list(windows) == ["default:2023-11-14T22:00:00Z", "default:2023-11-14T23:00:00Z"]
    first = {ds.sample_ids[i] for i in windows["default:2023-11-14T22:00:00Z"]}
    assert first == {str(folder / rel) for rel in sorted(LAYOUT)[:4]} | {str(folder / rel) for rel in BAD}
    subsets = dict(iter_windows(ds))
    assert [len(s) for s in subsets.values()] == [6, 2]
    second = subsets["default:2023-11-14T23:00:00Z"]
    assert {second[i]["window_id"] for i in range(len(second))} == {"default:2023-11-14T23:00:00Z"}


def test_count_windows():
    ds = TensorStream(torch.zeros(10, 1, 4, 4), stream="cam", window_size=4)
    windows = window_indices(ds)
    assert windows == {"cam:0": [0, 1, 2, 3], "cam:4": [4, 5, 6, 7], "cam:8": [8, 9]}
    assert [ds[i]["window_id"] for i in (0, 3, 4, 9)] == ["cam:0", "cam:0", "cam:4", "cam:8"]
    assert [(wid, len(s)) for wid, s in iter_windows(ds)] == [("cam:0", 4), ("cam:4", 4), ("cam:8", 2)]
    assert window_indices(TensorStream(torch.zeros(3, 2, 2))) == {"default:0": [0, 1, 2]}


@pytest.mark.filterwarnings("ignore::relmon.data.streams.BadInputWarning")
def test_count_windows_over_a_folder(folder):
    ds = ImageFolderStream(folder, window_size=3)
    assert [len(v) for v in window_indices(ds).values()] == [3, 3, 2]
    assert list(window_indices(ds)) == ["default:0", "default:3", "default:6"]


def test_tensor_stream_uint8_numpy_and_float():
    imgs = IMAGES[:4]
    ds = TensorStream(imgs, labels=[1, 2, 3, 4], ids=["a", "b", "c", "d"])
    item = ds[2]
    assert item["sample_id"] == "c" and item["label"] == 3 and item["index"] == 2
    assert item["x"].dtype == torch.float32 and item["x"].shape == (1, 28, 28)
    assert torch.equal(item["x"][0], torch.from_numpy(imgs[2]).float() / 255)

    x = torch.rand(3, 3, 5, 5)
    ds = TensorStream(x)  # float without preprocessing: already model space
    assert torch.equal(ds[1]["x"], x[1]) and ds[1]["label"] == -1 and ds[1]["sample_id"] == "1"
    prep = Preprocessing(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    torch.testing.assert_close(TensorStream(x, preprocessing=prep)[0]["x"], prep.normalize(x[:1])[0])
    batch = collate_skip_bad([ds[0], ds[1]])
    assert batch["sample_id"] == ["0", "1"] and batch["window_id"] == ["default:0"] * 2
    assert batch["n_bad"] == 0 and batch["bad_ids"] == [] and batch["x"].shape == (2, 3, 5, 5)
    assert batch["index"].tolist() == [0, 1] and batch["label"].tolist() == [-1, -1]


def test_fashion_mnist_stream_matches_to_tensor():
    images, labels = load_sample()
    ds = fashion_mnist_stream(use_sample=True, n=16)
    assert len(ds) == 16
    batch = collate_skip_bad([ds[i] for i in range(16)])
    torch.testing.assert_close(batch["x"], to_tensor(images[:16]), rtol=0, atol=1e-6)
    assert batch["label"].tolist() == labels[:16].tolist()
    with pytest.raises(ValueError, match="test images only"):
        fashion_mnist_stream("train", use_sample=True)


class IdsModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))

    def predict_step(self, batch, batch_idx):
        logits = None if batch["x"] is None else self.net(batch["x"])
        return {"ids": list(batch["sample_id"]), "n_bad": batch["n_bad"], "bad_ids": batch["bad_ids"],
                "logits": logits}


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::relmon.data.streams.BadInputWarning")
@pytest.mark.filterwarnings("ignore:.*(does not have many workers|GPU available).*")
def test_datamodule_predict_counts_bad_across_workers(folder):
    dm = StreamDataModule(ImageFolderStream(folder), batch_size=2, num_workers=2)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    out = trainer.predict(IdsModule(), datamodule=dm)
    ids = [i for o in out for i in o["ids"]]
    assert sorted(ids) == sorted(str(folder / rel) for rel in LAYOUT)  # every good id exactly once
    assert sum(o["n_bad"] for o in out) == 2
    assert sorted(i for o in out for i in o["bad_ids"]) == sorted(str(folder / rel) for rel in BAD)
    assert all(o["logits"] is None or o["logits"].shape == (len(o["ids"]), 10) for o in out)


@pytest.mark.filterwarnings("ignore::relmon.data.streams.BadInputWarning")
def test_datamodule_loaders_and_window_restriction(folder):
    ds = TensorStream(torch.zeros(10, 1, 2, 2), window_size=4)
    dm = StreamDataModule(ds, batch_size=3, window_id="default:4")
    batches = list(dm.predict_dataloader())
    assert [b["index"].tolist() for b in batches] == [[4, 5, 6], [7]]
    assert [b["index"].tolist() for b in StreamDataModule(ds, batch_size=5).val_dataloader()] == [
        [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    with pytest.raises(KeyError, match="default:5"):
        StreamDataModule(ds, window_id="default:5")
    with pytest.raises(ValueError, match="batch_size"):
        StreamDataModule(ds, batch_size=0)


def test_decoder_agrees_with_torchvision():
    """Pillow decodes (no C-library noise); torchvision's libpng/libjpeg decoder is the independent oracle."""
    from torchvision.io import ImageReadMode, decode_image

    def oracle(data, mode):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 deprecates its codecs
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)

    rgb = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    for img in (IMAGES[0], rgb):
        data = encode(img, "PNG")
        assert torch.equal(_decode(data, 3), oracle(data, ImageReadMode.RGB))
        grey, expected = _decode(data, 1).int(), oracle(data, ImageReadMode.GRAY).int()
        # grey stays exact; RGB -> luma (ITU-R 601 both) rounds where libpng truncates: at most 1 apart
        assert (grey - expected).abs().max() <= (0 if img.ndim == 2 else 1)
        assert torch.equal(_decode(data, 1), _decode_pil(data, 1))
    deep = (np.arange(8 * 8).reshape(8, 8) * 1000).astype(np.uint16)  # 16-bit grey PNG keeps its depth
    data = encode(deep, "PNG")
    decoded = _decode(data, 1)
    assert decoded.dtype == torch.uint16 and np.array_equal(decoded[0].numpy(), deep)
    assert torch.equal(decoded.to(torch.int32), oracle(data, ImageReadMode.GRAY).to(torch.int32))


def test_errors_say_what_was_expected(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist; expected a folder"):
        ImageFolderStream(missing)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images found.*\.png, \.jpg, \.jpeg.*1 other file"):
        ImageFolderStream(tmp_path / "empty")
    with pytest.raises(NotADirectoryError, match="expected a folder"):
        ImageFolderStream(tmp_path / "empty" / "sub" / "readme.txt")
    with pytest.raises(ValueError, match="rank 2"):
        TensorStream(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="rank 5"):
        TensorStream(torch.zeros(1, 1, 1, 4, 4))
    rgb_prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match=r"channels mismatch.*1 channel.*3 values"):
        TensorStream(torch.zeros(2, 1, 4, 4), preprocessing=rgb_prep)
    with pytest.raises(ValueError, match="channels mismatch"):
        ImageFolderStream(tmp_path / "empty", channels=1, preprocessing=rgb_prep)
    with pytest.raises(ValueError, match="channels must be 1"):
        ImageFolderStream(tmp_path / "empty", channels=2)
    with pytest.raises(ValueError, match="labels holds 3 values for 2 images"):
        TensorStream(torch.zeros(2, 4, 4), labels=[1, 2, 3])
    with pytest.raises(ValueError, match="window_size"):
        TensorStream(torch.zeros(2, 4, 4), window_size=0)
    with pytest.raises(ValueError, match="window must be"):
        ImageFolderStream(tmp_path / "empty", window="hourly")
    with pytest.raises(ValueError, match="cannot tell the modification time.*window_size"):
        _mtime({"name": "x", "size": 3}, "s3://b/x.png")
    assert _mtime({"LastModified": "2024-01-01T00:00:00Z"}, "x") == 1704067200.0
    with pytest.raises(ValueError, match="size_policy must be 'resize' or 'skip'"):
        ImageFolderStream(tmp_path / "empty", size_policy="crop")
    with pytest.raises(ValueError, match="max_pixels must be a positive int"):
        ImageFolderStream(tmp_path / "empty", max_pixels=0)
    with pytest.raises(ValueError, match="above Pillow's own limit.*MAX_IMAGE_PIXELS"):
        ImageFolderStream(tmp_path / "empty", max_pixels=10**12)


# -- robustness: odd sizes, non-finite inputs, pixel limit, no C-library noise ------------------------


def _tiny_monitor_predict(stream, batch_size):
    from relmon.lightning import RelevanceMonitor
    from relmon.models import load_embedded

    monitor = RelevanceMonitor(load_embedded("fmnist_cnn"), region=7, steps=4)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.predict(monitor, datamodule=StreamDataModule(stream, batch_size=batch_size))
    return out, monitor.window_summary()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_image_of_another_size_is_resized_or_skipped_never_aborts(tmp_path, batch_size):
    from relmon.models import FASHION_MNIST_PREPROCESSING

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.png").write_bytes(encode(IMAGES[i], "PNG"))
    odd = np.asarray(Image.fromarray(IMAGES[5]).resize((24, 20)))  # 20 x 24, another aspect ratio
    (root / "2b_odd.png").write_bytes(encode(odd, "PNG"))
    odd_id = str(root / "2b_odd.png")

    stream = ImageFolderStream(root, preprocessing=FASHION_MNIST_PREPROCESSING)
    assert stream.reference_size() == (28, 28)  # the first file, 0.png
    with pytest.warns(ResizedInputWarning, match=r"2b_odd.png is 20x24; resized to 28x28.*0.png"):
        good, bad_ids, n_bad = run_loader(stream, batch_size=batch_size)
    assert n_bad == 0 and len(good) == 6 and all(x.shape == (1, 28, 28) for x in good.values())
    raw = torch.from_numpy(odd).float()[None, None] / 255
    expected = torch.nn.functional.interpolate(raw, size=(28, 28), mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(good[odd_id], (expected - 0.2860) / 0.3530, atol=2e-3, rtol=0)
    assert stream.resized == {odd_id: (20, 24)}

    skip = ImageFolderStream(root, preprocessing=FASHION_MNIST_PREPROCESSING, size_policy="skip")
    with pytest.warns(BadInputWarning, match=r"size_mismatch.*20x24.*reference size is 28x28"):
        good, bad_ids, n_bad = run_loader(skip, batch_size=batch_size)
    assert n_bad == 1 and bad_ids == [odd_id] and len(good) == 5 and skip.errors == {SIZE_MISMATCH: 1}

    # the case: a whole window through the monitor, with batch size 1 and larger
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, summary = _tiny_monitor_predict(skip, batch_size)
        assert summary["_inputs"] == {"seen": 5, "bad": 1, "padding_skipped": 0}
        out, summary = _tiny_monitor_predict(stream, batch_size)
        assert summary["_inputs"]["seen"] == 6 and summary["_inputs"]["bad"] == 0


def test_non_finite_input_is_skipped_and_counted_not_fatal():
    x = torch.rand(8, 1, 28, 28)
    x[2, 0, 3, 4] = float("nan")
    x[5, 0, 0, 0] = float("inf")
    stream = TensorStream(x, labels=list(range(8)))
    with pytest.warns(BadInputWarning, match=r"skipping 2 \(non_finite\): ValueError: 1 of 784 values"):
        good, bad_ids, n_bad = run_loader(stream, batch_size=4)
    assert n_bad == 2 and sorted(bad_ids) == ["2", "5"] and sorted(good, key=int) == ["0", "1", "3", "4", "6", "7"]
    assert stream.errors == {NON_FINITE: 2}
    assert isinstance(stream[2], BadSample) and stream[2].reason == NON_FINITE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from relmon.models import FASHION_MNIST_PREPROCESSING

        prepped = TensorStream(x, preprocessing=FASHION_MNIST_PREPROCESSING)
        _, summary = _tiny_monitor_predict(prepped, 8)  # one batch holding both: the predict goes on
    assert summary["_inputs"] == {"seen": 6, "bad": 2, "padding_skipped": 0}

    # collate's own defence for datasets that are not relmon streams
    items = [{"x": torch.zeros(1, 2, 2), "sample_id": "a", "index": 0, "window_id": "w", "label": -1},
             {"x": torch.full((1, 2, 2), float("nan")), "sample_id": "b", "index": 1, "window_id": "w", "label": -1},
             {"x": torch.zeros(1, 3, 3), "sample_id": "c", "index": 2, "window_id": "w", "label": -1}]
    with pytest.warns(BadInputWarning):
        batch = collate_skip_bad(items)
    assert batch["sample_id"] == ["a"] and batch["bad_ids"] == ["b", "c"]
    assert batch["bad_reasons"] == [NON_FINITE, SIZE_MISMATCH] and batch["n_bad"] == 2


def _png_bomb(side: int) -> bytes:
    """A 1-bit grey PNG of side x side zero pixels, compressed row by row (never held decoded)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pixel_limit_refuses_large_images_from_the_header(tmp_path):
    from PIL import Image as PILImage

    limit_before = PILImage.MAX_IMAGE_PIXELS
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.png").write_bytes(encode(IMAGES[0], "PNG"))
    bomb = _png_bomb(20000)
    assert len(bomb) < 60_000  # a ~48 KB file that decodes to 20000 x 20000 = 400 megapixels
    (root / "bomb.png").write_bytes(bomb)
    big = np.zeros((1100, 1000), np.uint8)  # 1.1 megapixels
    (root / "big.png").write_bytes(encode(big, "PNG"))

    stream = ImageFolderStream(root, image_size=28)
    with pytest.warns(BadInputWarning, match=r"bomb.png \(too_large\)"):
        item = stream[stream.sample_ids.index(str(root / "bomb.png"))]
    assert isinstance(item, BadSample) and item.reason == TOO_LARGE
    assert not isinstance(stream[stream.sample_ids.index(str(root / "big.png"))], BadSample)  # under 50 MP

    small_limit = ImageFolderStream(root, image_size=28, max_pixels=1_000_000)
    with pytest.warns(BadInputWarning, match=r"1000x1100 = 1,100,000 pixels, above max_pixels=1,000,000"):
        good, bad_ids, n_bad = run_loader(small_limit, batch_size=3)
    assert n_bad == 2 and small_limit.errors == {TOO_LARGE: 2} and list(good) == [str(root / "a.png")]
    assert PILImage.MAX_IMAGE_PIXELS == limit_before  # no global Pillow state changed


def test_bad_files_print_nothing_on_stderr(tmp_path):
    """libpng writes to the C-level stderr (not always flushed before pytest reads it): check a whole process."""
    import subprocess
    import sys

    png = encode(IMAGES[0], "PNG")
    root = tmp_path / "imgs"
    root.mkdir()
    i = png.index(b"IDAT") + 10
    (root / "flip.png").write_bytes(png[:i] + bytes([png[i] ^ 0xFF]) + png[i + 1:])  # libpng: "IDAT: invalid ..."
    (root / "half.png").write_bytes(png[: len(png) // 2])
    (root / "half.jpg").write_bytes(encode(IMAGES[1], "JPEG")[:300])
    (root / "ok.png").write_bytes(png)
    script = (
        "import sys, warnings\n"
        "from relmon.data.streams import ImageFolderStream, BadSample\n"
        "stream = ImageFolderStream(sys.argv[1])\n"
        "with warnings.catch_warnings(record=True) as record:\n"
        "    warnings.simplefilter('always')\n"
        "    items = [stream[i] for i in range(len(stream))]\n"
        "print(sum(isinstance(i, BadSample) for i in items), dict(stream.errors),\n"
        "      sum('decode_error' in str(w.message) for w in record))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[0] == "3 {'decode_error': 3} 3"  # counted, and relmon's own warnings kept
    assert "libpng" not in proc.stderr and "libjpeg" not in proc.stderr and "Corrupt JPEG" not in proc.stderr, \
        proc.stderr


def test_job_config_passes_the_stream_limits(tmp_path):
    """The job's config declares max_pixels and size_policy, and the folder stream it builds uses them."""
    from relmon.config import ConfigError, config_from_dict, load_config
    from relmon.jobs.inputs import build_stream
    from relmon.models import load_embedded

    example = load_config(os.path.join(os.path.dirname(__file__), "..", "deploy", "relmon.example.yaml"))
    assert (example.max_pixels, example.size_policy) == (50_000_000, "resize")
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.png").write_bytes(encode(IMAGES[0], "PNG"))
    cfg = config_from_dict({"input": str(root), "max_pixels": 100, "size_policy": "skip"})
    stream = build_stream(cfg, load_embedded("fmnist_cnn"))
    assert (stream.max_pixels, stream.size_policy) == (100, "skip")
    with pytest.warns(BadInputWarning, match="28x28 = 784 pixels, above max_pixels=100"):
        assert stream[0].reason == TOO_LARGE
    with pytest.raises(ConfigError, match="size_policy must be 'resize' or 'skip', got 'crop'"):
        config_from_dict({"input": str(root), "size_policy": "crop"})
    with pytest.raises(ConfigError, match="max_pixels"):
        config_from_dict({"max_pixels": 0})
