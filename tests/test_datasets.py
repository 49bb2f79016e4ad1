"""Data sets: Omniglot (the shared cache, the download path on a loopback
server, corrupted files, splits, rotations, the MAML split of the command
line), the digits split, MNIST, and folders of images."""

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fomaml_sklearn.datasets import (
    apply_ink,
    fetch_omniglot,
    fetch_omniglot_maml,
    load_digits_split,
    load_image_folder,
    load_images,
    omniglot_split,
    rotate_classes,
)

from conftest import FAKE_OMNIGLOT_BITS, SHARED_OMNIGLOT, write_image_folder


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



def test_mirror_adds_the_mirrored_rotations_as_classes():
    X = np.random.default_rng(0).random((6, 1, 5, 5)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    X_m, y_m = rotate_classes(X, y, rotations=(0, 90), mirror=True)
    assert X_m.shape == (24, 1, 5, 5) and len(np.unique(y_m)) == 12
    np.testing.assert_array_equal(X_m[:12], rotate_classes(X, y, rotations=(0, 90))[0])
    np.testing.assert_array_equal(X_m[18:24], np.rot90(X, 1, axes=(2, 3))[..., ::-1])
    np.testing.assert_array_equal(y_m[18:24], y * 4 + 3)
    assert not set(y_m[12:]) & set(y_m[:12])  # mirrored images are new classes
    assert np.array_equal(rotate_classes(X, y, mirror=False)[1], rotate_classes(X, y)[1])

def _drawn_labels(X):
    """The character each fake Omniglot image draws (see conftest)."""
    bits = X[:, 0, 0, :FAKE_OMNIGLOT_BITS] > 0.5
    return bits.astype(np.int64) @ (1 << np.arange(FAKE_OMNIGLOT_BITS))


def test_maml_split_is_omniglot_split_with_seed_0_and_rotations(fake_omniglot_home):
    data = fetch_omniglot_maml(fake_omniglot_home, image_size=15, download_if_missing=False)
    X, y = fetch_omniglot(fake_omniglot_home, image_size=15, download_if_missing=False,
                          return_X_y=True)
    np.testing.assert_array_equal(_drawn_labels(X), y)       # the fake data is sound
    train, _, test = omniglot_split(y, protocol="maml", n_train=1200, random_state=0)
    X_rot, y_rot = rotate_classes(X[train], y[train])
    np.testing.assert_array_equal(data.X_train, X_rot)
    np.testing.assert_array_equal(data.y_train, y_rot)
    np.testing.assert_array_equal(data.X_test, X[test])
    np.testing.assert_array_equal(data.y_test, y[test])
    assert data.X_train.shape == (1200 * 2 * 4, 1, 15, 15) and data.X_train.dtype == np.float32
    assert len(np.unique(data.y_train)) == 4800 and len(np.unique(data.y_test)) == 423
    assert not set(data.y_train // 4) & set(data.y_test)
    np.testing.assert_array_equal(_drawn_labels(data.X_test), data.y_test)
    unrotated = data.y_train % 4 == 0
    np.testing.assert_array_equal(_drawn_labels(data.X_train[unrotated]),
                                  data.y_train[unrotated] // 4)
    assert "split_seed=0" in data.DESCR


def test_maml_split_seed_and_subsets(fake_omniglot_home):
    kw = dict(image_size=15, download_if_missing=False)
    full = fetch_omniglot_maml(fake_omniglot_home, **kw)
    test_only = fetch_omniglot_maml(fake_omniglot_home, subset="test", **kw)
    assert test_only.X_train is None and test_only.y_train is None
    np.testing.assert_array_equal(test_only.X_test, full.X_test)
    train_only = fetch_omniglot_maml(fake_omniglot_home, subset="train", **kw)
    assert train_only.X_test is None and train_only.y_test is None
    np.testing.assert_array_equal(train_only.y_train, full.y_train)
    other = fetch_omniglot_maml(fake_omniglot_home, subset="test", split_seed=1, **kw)
    assert len(np.unique(other.y_test)) == 423
    assert set(other.y_test) != set(full.y_test)
    with pytest.raises(ValueError, match="subset='val' is not one of 'all', 'train', 'test'"):
        fetch_omniglot_maml(fake_omniglot_home, subset="val", **kw)
    with pytest.raises(OSError, match="not found and download_if_missing=False"):
        fetch_omniglot_maml(fake_omniglot_home / "elsewhere", download_if_missing=False)


def test_digits_split():
    from sklearn.datasets import load_digits

    data = load_digits_split()
    X, y = load_digits(return_X_y=True)
    assert set(data.y_train) == set(range(6)) and set(data.y_test) == set(range(6, 10))
    assert len(data.y_train) + len(data.y_test) == len(y)
    assert data.X_train.dtype == np.float32 and data.X_train.shape[1] == 64
    np.testing.assert_allclose(data.X_test, X[y >= 6] / 16.0, rtol=1e-6)


# ------------------------------------------------------------- image folders
def test_load_image_folder(tmp_path):
    from PIL import Image

    write_image_folder(tmp_path / "data", ["dog", "cat"], 2, size=10)
    (tmp_path / "data" / ".hidden").mkdir()
    data = load_image_folder(tmp_path / "data", image_size=10)
    assert data.images.shape == (4, 1, 10, 10) and data.images.dtype == np.float32
    assert list(data.target_names) == ["cat", "dog"]
    np.testing.assert_array_equal(data.target, [0, 0, 1, 1])
    assert [Path(f).name for f in data.filenames] == ["cat_0.png", "cat_1.png",
                                                      "dog_0.png", "dog_1.png"]
    stored = np.asarray(Image.open(data.filenames[0]), dtype=np.float32) / 255.0
    np.testing.assert_allclose(data.images[0, 0], stored)       # as stored, no resize
    X, y = load_image_folder(tmp_path / "data", image_size=5, channels=3, return_X_y=True)
    assert X.shape == (4, 3, 5, 5) and list(y) == ["cat", "cat", "dog", "dog"]
    np.testing.assert_allclose(X[:, 0], X[:, 2])                 # gray as RGB
    assert 0.0 <= X.min() and X.max() <= 1.0


def test_load_image_folder_errors(tmp_path):
    write_image_folder(tmp_path / "one", ["only"], 2)
    with pytest.raises(ValueError, match="needs at least 2 class subfolders.*found only"):
        load_image_folder(tmp_path / "one")
    with pytest.raises(FileNotFoundError, match="missing is not a folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "one" / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no valid file for the classes empty"):
        load_image_folder(tmp_path / "one")
    with pytest.raises(ValueError, match="channels=2 is not 1 or 3"):
        load_image_folder(tmp_path / "one", channels=2)
    with pytest.raises(ValueError, match="image_size=0 is not a positive integer"):
        load_image_folder(tmp_path / "one", image_size=0)


def test_load_images_in_the_order_given(tmp_path):
    folder = write_image_folder(tmp_path / "q", ["b", "a"], 2, flat=True)
    nested = write_image_folder(tmp_path / "q" / "sub", ["c"], 1, flat=True)
    write_image_folder(tmp_path / "q" / ".hidden", ["h"], 1, flat=True)
    (tmp_path / "q" / "notes.txt").write_text("not an image")
    single = write_image_folder(tmp_path / "single", ["z"], 1, flat=True)
    data = load_images([single[0], tmp_path / "q"], image_size=6)
    expected = [single[0]] + sorted(folder + nested, key=str)
    assert data.filenames == [str(p) for p in expected]
    assert data.images.shape == (6, 1, 6, 6)
    one = load_images(str(tmp_path / "q"), image_size=6)            # one path, not a list
    np.testing.assert_array_equal(one.images, data.images[1:])
    with pytest.raises(FileNotFoundError, match="x.png does not exist"):
        load_images([tmp_path / "single", tmp_path / "q" / "x.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found in"):
        load_images([tmp_path / "empty"])
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    with pytest.raises(OSError, match="cannot read the image"):
        load_images([bad])


def test_apply_ink():
    paper = np.full((2, 1, 4, 4), 0.9, dtype=np.float32)
    X, inverted = apply_ink(paper)
    assert inverted and np.allclose(X, 0.1)
    kept, inverted = apply_ink(paper, "light")
    assert kept is paper and not inverted
    dark = 1.0 - paper
    assert apply_ink(dark)[1] is False and apply_ink(dark, "dark")[1] is True
    assert apply_ink(np.zeros((0, 1, 4, 4)))[1] is False
    with pytest.raises(ValueError, match="ink='bright' is not one of"):
        apply_ink(paper, "bright")


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


@pytest.mark.parametrize("size", [0, -5, 28.5, "big", True])
def test_fetch_omniglot_checks_image_size(tmp_path, size):
    with pytest.raises(ValueError, match=f"image_size must be an integer >= 1.*got {size!r}"):
        fetch_omniglot(tmp_path, image_size=size, download_if_missing=False)


def test_fetch_omniglot_offline_creates_nothing_and_rejects_a_file(tmp_path):
    home = tmp_path / "not" / "there"
    with pytest.raises(OSError, match="not found and download_if_missing=False"):
        fetch_omniglot(home, download_if_missing=False)
    assert not (tmp_path / "not").exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        fetch_omniglot(a_file, download_if_missing=False)


def test_the_package_keeps_the_names_of_the_module_it_replaced():
    """fomaml_sklearn.datasets became a package of one module per source; every
    name of the former module is still importable from it, and the docstring
    examples of the submodules' functions are run as the package's."""
    import fomaml_sklearn.datasets as datasets

    former = ["get_data_home", "fetch_omniglot", "omniglot_split", "rotate_classes",
              "fetch_omniglot_maml", "load_digits_split", "load_mnist",
              "load_image_folder", "load_images", "apply_ink", "make_subspace_classes",
              "make_sinusoid_tasks", "MAML_SPLIT_SEED", "OMNIGLOT_URL", "OMNIGLOT_MD5"]
    assert set(former) <= set(datasets.__all__)
    for name in datasets.__all__:
        value = getattr(datasets, name)
        if callable(value):
            assert value.__module__.startswith("fomaml_sklearn.datasets.")
            assert datasets.__test__[name] is value

