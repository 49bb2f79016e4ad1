"""Omniglot loading: the shared cache, the download path (loopback server),
corrupted files, splits and rotations."""

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fomaml_sklearn.datasets import fetch_omniglot, omniglot_split, rotate_classes

from conftest import SHARED_OMNIGLOT


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    if not (SHARED_OMNIGLOT / "images_background.npz").exists():
        pytest.skip(f"Omniglot copy not found at {SHARED_OMNIGLOT}")
    home = tmp_path_factory.mktemp("home")
    (home / "omniglot").symlink_to(SHARED_OMNIGLOT.resolve())
    return home


def test_fetch_from_the_shared_cache(shared_home):
    bunch = fetch_omniglot(shared_home, subset="all", download_if_missing=False)
    X, y = bunch.data, bunch.target
    assert X.shape == (1623 * 20, 1, 28, 28) and X.dtype == np.float32
    assert 0.0 <= X.min() and X.max() <= 1.0 and 0.03 < X.mean() < 0.2  # ink is sparse
    assert np.all(np.bincount(y) == 20) and len(np.unique(y)) == 1623
    assert set(bunch.subset_of) == {"background", "evaluation"}
    assert y[bunch.subset_of == "evaluation"].min() == 964
    assert bunch.character[bunch.subset_of == "evaluation"].min() == 0
    X_eval, y_eval = fetch_omniglot(shared_home, subset="evaluation", image_size=14,
                                    download_if_missing=False, return_X_y=True)
    assert X_eval.shape == (659 * 20, 1, 14, 14) and y_eval.max() == 658


def test_missing_file_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(OSError, match="not found and download_if_missing=False"):
        fetch_omniglot(tmp_path, download_if_missing=False)


def test_splits_are_class_disjoint_and_reproducible():
    y = np.repeat(np.arange(1623), 2)
    train, val, test = omniglot_split(y, n_train=1200, n_val=100, random_state=0)
    assert len(np.unique(y[train])) == 1100 and len(np.unique(y[val])) == 100
    assert len(np.unique(y[test])) == 423
    assert not (set(y[train]) & set(y[test])) and not (set(y[val]) & set(y[test]))
    again = omniglot_split(y, n_train=1200, n_val=100, random_state=0)
    other = omniglot_split(y, n_train=1200, n_val=100, random_state=1)
    assert np.array_equal(train, again[0]) and not np.array_equal(train, other[0])
    subset_of = np.where(y < 964, "background", "evaluation")
    train, val, test = omniglot_split(y, protocol="lake", subset_of=subset_of)
    assert set(y[train]) == set(range(964)) and not val.any()


def test_rotations_make_distinct_classes():
    X = np.random.default_rng(0).random((6, 1, 5, 5)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    X_rot, y_rot = rotate_classes(X, y)
    assert X_rot.shape == (24, 1, 5, 5) and len(np.unique(y_rot)) == 12
    np.testing.assert_array_equal(X_rot[6:12], np.rot90(X, 1, axes=(2, 3)))
    np.testing.assert_array_equal(y_rot[6:12], y * 4 + 1)


# ------------------------------------------------------------- download path
def _tiny_upstream_zip():
    """images_background/<Alphabet>/<characterNN>/<XXXX_YY>.png, 105x105."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pictures = {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        char = 0
        for alphabet in ("Alpha", "Beta"):
            for c in range(2):
                char += 1
                for drawer in (1, 2, 3):
                    ink = rng.random((105, 105)) < 0.1
                    img = Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert("1")
                    data = io.BytesIO()
                    img.save(data, format="PNG")
                    name = (f"images_background/{alphabet}/character{c + 1:02d}/"
                            f"{char + 100:04d}_{drawer:02d}.png")
                    zf.writestr(name, data.getvalue())
                    pictures[(char - 1, drawer - 1)] = ~ink
    return buffer.getvalue(), pictures


@pytest.fixture
def server():
    """A loopback HTTP server whose body and hit count the test controls."""
    state = {"body": b"", "hits": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["hits"] += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(state["body"])))
            self.end_headers()
            self.wfile.write(state["body"])

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_download_converts_once_and_reuses_the_cache(tmp_path, server):
    body, pictures = _tiny_upstream_zip()
    server["body"] = body
    md5 = {"images_background": hashlib.md5(body).hexdigest()}
    bunch = fetch_omniglot(tmp_path, subset="background", image_size=None,
                           _url=server["url"], _md5=md5)
    hits = server["hits"]
    assert hits >= 1
    assert bunch.data.shape == (12, 1, 105, 105)
    np.testing.assert_array_equal(bunch.target, np.repeat(np.arange(4), 3))
    assert list(bunch.alphabet[::3]) == ["Alpha", "Alpha", "Beta", "Beta"]
    for (char, drawer), background in pictures.items():
        np.testing.assert_array_equal(bunch.data[char * 3 + drawer, 0], ~background)
    again = fetch_omniglot(tmp_path, subset="background", image_size=None,
                           _url=server["url"], _md5=md5)
    assert server["hits"] == hits  # loaded from the cache, no request
    np.testing.assert_array_equal(again.data, bunch.data)
    assert [p.name for p in (tmp_path / "omniglot").iterdir()] == ["images_background.npz"]


@pytest.mark.parametrize("damage", ["truncated", "wrong_md5"])
def test_bad_download_is_a_clear_error_and_leaves_nothing(tmp_path, server, damage):
    body, _ = _tiny_upstream_zip()
    server["body"] = body[: len(body) // 2] if damage == "truncated" else body
    md5 = {"images_background": hashlib.md5(body).hexdigest()}
    if damage == "wrong_md5":
        md5 = {"images_background": "0" * 32}
    with pytest.raises(OSError, match="images_background.zip failed"):
        fetch_omniglot(tmp_path, subset="background", _url=server["url"], _md5=md5)
    assert list((tmp_path / "omniglot").iterdir()) == []


def test_corrupted_cache_names_the_file(tmp_path):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    (folder / "images_background.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(OSError, match=r"images_background.npz cannot be read.*Delete it"):
        fetch_omniglot(tmp_path, subset="background", download_if_missing=False)


def test_checksum_mismatch_is_detected(tmp_path, shared_home):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    data = (Path(shared_home) / "omniglot" / "images_evaluation.npz").read_bytes()
    (folder / "images_evaluation.npz").write_bytes(data[:-10] + b"0123456789")
    (folder / "SHA256SUMS").write_bytes(
        (Path(shared_home) / "omniglot" / "SHA256SUMS").read_bytes())
    with pytest.raises(OSError, match="does not match its checksum"):
        fetch_omniglot(tmp_path, subset="evaluation", download_if_missing=False)


def _write_idx(path, array):
    """IDX format: magic (0, 0, dtype 0x08, ndim), big-endian sizes, bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_load_mnist_reads_local_idx_files(tmp_path):
    from fomaml_sklearn.datasets import load_mnist

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28))
    labels = np.array([3, 1, 4, 1, 5, 9, 2])
    for prefix, n in (("train", 7), ("t10k", 3)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:n])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[:n])
    X, y = load_mnist(tmp_path, return_X_y=True)
    assert X.shape == (7, 1, 28, 28) and X.dtype == np.float32
    np.testing.assert_allclose(X[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    assert load_mnist(tmp_path, train=False).data.shape == (3, 1, 28, 28)
    with pytest.raises(OSError, match="MNIST not found"):
        load_mnist(tmp_path / "elsewhere")
