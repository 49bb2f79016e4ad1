"""The benchmark scripts' shared helpers (benchmarks/throughput.py)."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "throughput_benchmark", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("throughput_benchmark", None)


@pytest.mark.parametrize("native", [True, False])
def test_machine_line_times_bfloat16_only_where_it_is_native(throughput, monkeypatch, native):
    """On a CPU without native bfloat16 (AVX2: emulated, minutes for one
    2048 x 2048 product) the machine line names bfloat16 without timing it,
    so the main job and the test suite start as fast there as elsewhere."""
    timed = []
    monkeypatch.setattr(throughput, "matmul_peak", lambda dtype: timed.append(dtype) or 100.0)
    monkeypatch.setattr(throughput, "resolve_precision",
                        lambda precision, device: "bfloat16" if native else "float32")
    line = throughput.machine_line()
    assert "float32 100 GFLOP/s" in line
    if native:
        assert timed == [torch.float32, torch.bfloat16]
        assert "bfloat16 100 GFLOP/s" in line
    else:
        assert timed == [torch.float32]
        assert "bfloat16 not native here, not timed" in line


def test_resolve_precision_auto_follows_the_cpu_flags(monkeypatch):
    """The machine line asks the estimator's own "auto" rule, which reads the
    CPU flags: bfloat16 with AVX512-BF16 or AMX, float32 on AVX2 alone."""
    import builtins
    import io

    from fomaml_sklearn import _config

    real_open = builtins.open
    for flags, expected in (("fpu avx2 fma", "float32"),
                            ("fpu avx2 avx512f avx512_bf16", "bfloat16"),
                            ("fpu avx2 amx_bf16", "bfloat16")):
        monkeypatch.setattr(builtins, "open", lambda path, *a, _f=flags, **k: io.StringIO(
            f"flags\t: {_f}\n") if path == "/proc/cpuinfo" else real_open(path, *a, **k))
        assert _config.resolve_precision("auto", torch.device("cpu")) == expected


def _load_benchmark(name, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark",
                                                  REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def background_only_home(tmp_path):
    """A fake Omniglot data home holding the background file only (the
    within-alphabet benchmark must never need the evaluation alphabets), with
    an alphabet file naming three alphabets: two of >= 20 characters, one of 17."""
    import json
    import shutil

    from conftest import write_fake_omniglot

    home = write_fake_omniglot(tmp_path / "full")
    only = tmp_path / "home" / "omniglot"
    only.mkdir(parents=True)
    shutil.copy(home / "omniglot" / "images_background.npz", only)
    alphabets = {"A": {"first": 100, "last": 123, "n_characters": 24},
                 "B": {"first": 300, "last": 319, "n_characters": 20},
                 "Short": {"first": 500, "last": 516, "n_characters": 17}}
    (only / "background_alphabets_known.json").write_text(json.dumps(
        {"file": "images_background.npz", "alphabets": alphabets}))
    return tmp_path / "home"


def test_within_alphabet_episodes_stay_inside_one_held_out_alphabet(
        background_only_home, monkeypatch):
    wa = _load_benchmark("within_alphabet", monkeypatch)
    X, y, held_out = wa.load(background_only_home, True, 15)
    assert sorted(held_out) == ["A", "B", "Short"]
    assert held_out["A"].shape == (24, 2, 1, 15, 15)
    # No held-out character (nor a rotation of one) is in meta-training.
    characters = set(np.unique(y) // 4)
    assert characters.isdisjoint(range(100, 124)) and characters.isdisjoint(range(500, 517))
    assert len(characters) == 964 - 24 - 20 - 17
    eps = wa.episodes(held_out, 5, seed=0)
    assert [e[0] for e in eps] == ["A"] * 5 + ["B"] * 5  # Short has < 20 characters
    for name, chars, d_support, d_query in eps:
        assert len(set(chars)) == 20 and chars.max() < len(held_out[name])
        assert d_support != d_query
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(eps, wa.episodes(held_out, 5, 0)))


def test_within_alphabet_distorted_copies_add_drawings_of_training_characters_only(
        background_only_home, monkeypatch, capsys):
    """--copies K: every meta-training drawing gets K distorted copies (made
    at 105x105, resized), under its own class; the held-out alphabets are
    the same as without copies."""
    wa = _load_benchmark("within_alphabet", monkeypatch)
    X, y, held = wa.load(background_only_home, True, 15, rotations=False)
    Xc, yc, held_c = wa.load(background_only_home, True, 15, rotations=False, copies=2,
                             copy_strength=0.5)
    assert len(Xc) == 3 * len(X) and Xc.shape[1:] == X.shape[1:]
    np.testing.assert_array_equal(Xc[:len(X)], X)
    np.testing.assert_array_equal(np.unique(yc, return_counts=True)[1],
                                  3 * np.unique(y, return_counts=True)[1])
    assert all(np.array_equal(held[n], held_c[n]) for n in held)
    extra = Xc[len(X):].reshape(len(X), 2, -1)
    assert not np.allclose(extra[:, 0], X.reshape(len(X), -1))
    Xr, yr, _ = wa.load(background_only_home, True, 15, copies=1, mirror=True)
    assert len(Xr) == 2 * 8 * len(X) and len(np.unique(yr)) == 8 * len(np.unique(y))
    monkeypatch.setattr(wa, "machine_line", lambda: "Machine: test")
    for flag in ("--copies", "--test-copies"):
        with pytest.raises(SystemExit, match=f"{flag} must be >= 0"):
            wa.main(["--data-home", str(background_only_home), "--offline", "--steps", "1",
                     flag, "-1"])
    # --test-copies K: every support drawing's K copies join the support set.
    out = wa.main(["--data-home", str(background_only_home), "--offline", "--episodes", "2",
                   "--threads", "1", "--image-size", "15", "--steps", "2", "--copies", "1",
                   "--test-copies", "2", "--test-shift", "1", "--set", "n_filters=4",
                   "--set", "meta_batch_size=2", "--set", "meta_batches_per_epoch=2"])
    assert set(out["accuracy"]) == {(0, 0), (1, 0), (0, 2), (1, 2)}
    assert "test_shift=1, 2 test copies:" in capsys.readouterr().out
    adapted = []
    monkeypatch.setattr(wa.FOMAMLClassifier, "adapt",
                        lambda self, X, y: adapted.append((X.shape, np.bincount(y))) or self)
    monkeypatch.setattr(wa.FOMAMLClassifier, "predict", lambda self, X: np.arange(len(X)))
    eps = wa.episodes(held, 1, seed=0)
    full = wa.held_out_full_size(background_only_home, True)
    accs, _ = wa.score(wa.FOMAMLClassifier(), held, eps, full, copies=3)
    assert accs.tolist() == [1.0, 1.0]
    assert adapted[0][0] == (80, 1, 15, 15) and adapted[0][1].tolist() == [4] * 20


def test_within_alphabet_benchmark_runs_through_the_estimator(background_only_home,
                                                              monkeypatch, capsys):
    wa = _load_benchmark("within_alphabet", monkeypatch)
    monkeypatch.setattr(wa, "machine_line", lambda: "Machine: test")
    common = ["--data-home", str(background_only_home), "--offline", "--episodes", "3",
              "--threads", "1", "--image-size", "15"]
    model = background_only_home / "wa.fomaml"
    out = wa.main([*common, "--steps", "4", "--set", "n_filters=4",
                   "--set", "meta_batch_size=2", "--set", "meta_batches_per_epoch=2",
                   "--test-shift", "1", "--save", str(model)])
    text = capsys.readouterr().out
    assert out["n_steps"] == 4 and set(out["accuracy"]) == {0, 1}
    assert "4 meta-steps in" in text and "test_shift=1:" in text
    assert "per alphabet: A " in text and "Short" not in text.split("per alphabet")[1]
    # The saved model scores the same episodes the same way, and --load with
    # --set changes test-time parameters only.
    again = wa.main([*common, "--load", str(model), "--test-shift", "1"])
    assert again["accuracy"] == out["accuracy"] and again["minutes"] is None
    wa.main([*common, "--load", str(model), "--test-shift", "0",
             "--set", "n_inner_steps_test=0"])
    assert "n_inner_steps_test=0" in capsys.readouterr().out
    # --load with --steps meta-trains the saved model further (warm start),
    # here on grouped tasks at a lower meta rate, and saves it again.
    more = background_only_home / "wa_more.fomaml"
    cont = wa.main([*common, "--load", str(model), "--steps", "2", "--groups", "20",
                    "--set", "lr=0.0003", "--test-shift", "0", "--save", str(more)])
    text = capsys.readouterr().out
    assert cont["n_steps"] == 6 and cont["minutes"] is not None
    assert "2 meta-steps more (6 in all)" in text and "groups of 20" in text
    reloaded = wa.FOMAMLClassifier.load(more)
    assert reloaded.n_meta_steps_ == 6 and reloaded.lr == 0.0003
    with pytest.raises(SystemExit, match="not --minutes"):
        wa.main([*common, "--load", str(model), "--minutes", "1"])
    # --drawer-pairs scores one episode per ordered pair of drawers (2 here).
    pairs = wa.main([*common, "--load", str(model), "--test-shift", "0", "--drawer-pairs"])
    assert sorted(pairs["drawers"]) == ["A", "B"]
    assert "Every ordered pair of drawers (4 episodes" in capsys.readouterr().out
    # --ensemble averages the models' probabilities: a model with itself
    # scores as it does alone; with another model it loads and scores both.
    same = wa.main([*common, "--load", str(model), "--ensemble", str(model),
                    "--test-shift", "1"])
    assert same["accuracy"] == out["accuracy"]
    both = wa.main([*common, "--load", str(model), "--ensemble", str(more),
                    "--test-shift", "0", "--drawer-pairs"])
    text = capsys.readouterr().out
    assert f"Ensemble member {more}: 6 meta-steps" in text
    assert 0.0 <= both["accuracy"][0] <= 1.0 and sorted(both["drawers"]) == ["A", "B"]
    with pytest.raises(SystemExit, match="--load FILE"):
        wa.main([*common, "--steps", "2", "--ensemble", str(model)])


def test_within_alphabet_pretraining_starts_meta_training_from_its_weights(
        background_only_home, monkeypatch, capsys):
    wa = _load_benchmark("within_alphabet", monkeypatch)
    monkeypatch.setattr(wa, "machine_line", lambda: "Machine: test")
    rng = np.random.default_rng(0)
    X = rng.random((60, 1, 15, 15), dtype=np.float32)
    y = np.repeat(np.arange(0, 30, 3), 6)  # 10 classes, not numbered 0..9
    args = wa.build_parser().parse_args(["--image-size", "15", "--pretrain-minutes", "0.002"])
    fresh = wa.pretrain_backbone(args, {"n_filters": 4}, X, y, batch_size=8,
                                 lr=0.0)  # no step moves it: the initialisation
    body = wa.pretrain_backbone(args, {"n_filters": 4, "augment_shift": 2}, X, y,
                                batch_size=8)
    assert "pretrained" in capsys.readouterr().out
    assert type(body).__name__ == "Conv4Backbone" and body.out_features == 4
    moved = [not torch.equal(a, b) for a, b in zip(fresh.parameters(), body.parameters())]
    assert all(moved)
    # Through main: the estimator meta-trains the pretrained Conv-4, with the
    # preset's cosine head around it.
    seen = []
    real_fit = wa.FOMAMLClassifier.fit
    monkeypatch.setattr(wa.FOMAMLClassifier, "fit",
                        lambda self, *a, **k: seen.append(self.module) or real_fit(self, *a, **k))
    out = wa.main(["--data-home", str(background_only_home), "--offline", "--episodes", "1",
                   "--threads", "1", "--image-size", "15", "--steps", "2",
                   "--pretrain-minutes", "0.002", "--set", "n_filters=4",
                   "--set", "meta_batch_size=2", "--set", "meta_batches_per_epoch=2",
                   "--test-shift", "0"])
    assert out["n_steps"] == 2 and type(seen[0]).__name__ == "Conv4Backbone"
    assert "pretrained" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="fewer than --minutes"):
        wa.main(["--minutes", "1", "--pretrain-minutes", "1"])
    with pytest.raises(SystemExit, match="give a .joblib file name"):
        wa.main(["--steps", "50", "--pretrain-minutes", "1", "--save", "m.fomaml"])
    with pytest.raises(SystemExit, match="experiment's backbone"):
        wa.main(["--steps", "50", "--pretrain-minutes", "1", "--no-last-pool"])


def test_within_alphabet_drawer_summary_finds_the_drawer_that_spoils_episodes(
        background_only_home, monkeypatch):
    wa = _load_benchmark("within_alphabet", monkeypatch)
    held_out = {"A": np.zeros((24, 5, 1, 4, 4)), "Short": np.zeros((17, 5, 1, 4, 4))}
    eps = wa.drawer_pair_episodes(held_out, seed=0)
    assert len(eps) == 5 * 4 and {e[0] for e in eps} == {"A"}
    assert {(e[2], e[3]) for e in eps} == {(a, b) for a in range(5) for b in range(5) if a != b}
    # Every episode drawn by drawer 3 fails, drawer 1's as support half fail.
    accs = np.array([0.0 if 3 in (d_s, d_q) else 0.5 if d_s == 1 else 1.0
                     for _, _, d_s, d_q in eps])
    mean, order, per, without = wa.drawer_summary(accs, eps)["A"]
    assert mean == pytest.approx(accs.mean())
    assert order[:2] == [3, 1] and per[3] == 0.0
    assert without[0] == pytest.approx(np.mean([0.5] * 3 + [1.0] * 9))  # drawers 0, 1, 2, 4
    assert without[1] == 1.0 and len(without) == 3


def test_within_alphabet_probe_backbone_normalises_and_keeps_the_last_maps(
        background_only_home, monkeypatch, capsys, tmp_path):
    import torch

    wa = _load_benchmark("within_alphabet", monkeypatch)
    x = torch.rand(5, 1, 28, 28)
    plain = wa.ProbeConv4((1, 28, 28), n_filters=8)
    probe = wa.ProbeConv4((1, 28, 28), n_filters=8, feature_norm=3.0, last_pool=False)
    assert plain(x).shape == (5, 8)  # 28 -> 14 -> 7 -> 3 -> 1
    # The same network as the built-in Conv-4 (layer for layer, same weights).
    from fomaml_sklearn.backbones import Conv4Backbone

    reference = Conv4Backbone((1, 28, 28), n_filters=8)
    reference.load_state_dict(plain.state_dict())
    torch.testing.assert_close(plain.eval()(x), reference.eval()(x))
    # At 56x56: a fifth block, a first pool of 4, or a first stride of 2 all
    # end at 1x1 maps; the strided one runs its second block on 14x14 maps.
    big = torch.rand(5, 1, 56, 56)
    for options in (dict(n_blocks=5), dict(first_pool=4),
                    dict(first_stride=2, first_kernel=5)):
        assert wa.ProbeConv4((1, 56, 56), n_filters=8, **options)(big).shape == (5, 8)
    strided = wa.ProbeConv4((1, 56, 56), n_filters=8, first_stride=2, first_kernel=5)
    assert strided.blocks[:3](big.contiguous(memory_format=torch.channels_last)).shape \
        == (5, 8, 14, 14)
    feats = probe(x)
    assert feats.shape == (5, 8 * 3 * 3)
    torch.testing.assert_close(feats.norm(dim=1), torch.full((5,), 3.0))
    # A learnt scale starts at feature_norm and is a parameter the loss moves.
    learnt = wa.ProbeConv4((1, 28, 28), n_filters=8, feature_norm=3.0, learn_scale=True)
    assert [n for n, _ in learnt.named_parameters()].count("log_scale") == 1
    out = learnt(x)
    torch.testing.assert_close(out.norm(dim=1), torch.full((5,), 3.0))
    out.norm(dim=1).sum().backward()
    assert learnt.log_scale.grad == pytest.approx(15.0)  # d(5 * 3 e^s)/ds at e^s = 3
    with pytest.raises(ValueError, match="needs feature_norm"):
        wa.ProbeConv4((1, 28, 28), learn_scale=True)
    # ... and is the estimator's head="cosine" around Conv-4, layer for layer.
    from fomaml_sklearn.backbones import ScaledUnitFeatures

    cosine = ScaledUnitFeatures(Conv4Backbone((1, 28, 28), n_filters=8), 3.0)
    state = {("log_scale" if k == "log_scale" else "body." + k): v
             for k, v in learnt.state_dict().items()}
    cosine.load_state_dict(state)
    torch.testing.assert_close(cosine.eval()(x), learnt.eval()(x))
    # Through the benchmark: the estimator gets the probe as a user module.
    monkeypatch.setattr(wa, "machine_line", lambda: "Machine: test")
    out = wa.main(["--data-home", str(background_only_home), "--offline", "--episodes", "2",
                   "--threads", "1", "--image-size", "15", "--steps", "2",
                   "--set", "meta_batch_size=2", "--set", "meta_batches_per_epoch=2",
                   "--set", "n_filters=4", "--test-shift", "0",
                   "--feature-norm", "3", "--no-last-pool", "--set", "head=prototype"])
    assert out["n_steps"] == 2
    text = capsys.readouterr().out
    assert "ProbeConv4" in text and "'feature_norm': 3.0" in text
    # The estimator's safe format cannot rebuild the probe (user code): --save
    # asks for a .joblib name before meta-training, and a pickle loads again.
    probe_args = ["--data-home", str(background_only_home), "--offline", "--episodes", "2",
                  "--threads", "1", "--image-size", "15", "--set", "meta_batch_size=2",
                  "--set", "meta_batches_per_epoch=2", "--set", "n_filters=4",
                  "--test-shift", "0", "--first-stride", "2"]
    with pytest.raises(SystemExit, match="--feature-norm SCALE"):
        wa.main([*probe_args, "--steps", "2", "--learn-scale"])
    # The preset's head="cosine" normalises already: not twice.
    with pytest.raises(SystemExit, match="--set head=prototype"):
        wa.main([*probe_args, "--steps", "2", "--feature-norm", "3"])
    with pytest.raises(SystemExit, match="give a .joblib file name"):
        wa.main([*probe_args, "--steps", "2", "--save", str(tmp_path / "probe.fomaml")])
    assert not (tmp_path / "probe.fomaml").exists()
    monkeypatch.setitem(sys.modules, wa.__name__, wa)  # pickles find the class there
    saved = tmp_path / "probe.joblib"
    first = wa.main([*probe_args, "--steps", "2", "--save", str(saved)])
    again = wa.main([*probe_args, "--load", str(saved)])
    assert again["accuracy"] == first["accuracy"] and again["n_steps"] == 2


def test_within_alphabet_spliced_characters_join_halves_of_one_block_by_one_drawer(
        background_only_home, monkeypatch):
    """--splice K: K new characters per block of 20 character numbers, each
    drawing the left (or top) half of one of the block's characters and the
    other half of another, by the same drawer; numbered in blocks of their
    own above the originals, so block_groups keeps them among themselves."""
    wa = _load_benchmark("within_alphabet", monkeypatch)
    rng = np.random.default_rng(0)
    char = np.repeat(np.r_[0:25, 40:41, 60:80], 3)  # block 2 has one character only
    X = rng.random((len(char), 1, 6, 6)).astype(np.float32)
    X_new, c_new = wa.spliced_characters(X, char, 4, width=20, seed=0)
    new_chars = np.unique(c_new)
    assert len(new_chars) == 3 * 4 and new_chars.min() >= 80  # blocks 0, 1 and 3
    assert sorted(set(new_chars // 20)) == [4, 5, 6]  # one block per source block
    drawings = {c: X[char == c] for c in np.unique(char)}
    sources = []
    for c in new_chars:
        block = [k for k in drawings if k // 20 == [0, 1, 3][c // 20 - 4]]
        new = X_new[c_new == c]
        assert len(new) == 3
        found = set()
        for a in block:
            for b in block:
                for side, halves in enumerate(((np.s_[..., :3, :], np.s_[..., 3:, :]),
                                               (np.s_[..., :, :3], np.s_[..., :, 3:]))):
                    if a != b and np.array_equal(new[halves[0]], drawings[a][halves[0]]) \
                            and np.array_equal(new[halves[1]], drawings[b][halves[1]]):
                        found.add((a, b, side))
        assert len(found) == 1, f"new character {c}: halves of {found}"
        sources += found
    assert len(set(sources)) == len(sources)  # no two alike
    # A block of 2 characters has 4 distinct choices only.
    pair = np.repeat([0, 1], 2)
    assert len(np.unique(wa.spliced_characters(X[:4], pair, 6, width=20)[1])) == 4
    again = wa.spliced_characters(X, char, 4, width=20, seed=0)
    np.testing.assert_array_equal(again[0], X_new)
    groups = wa.block_groups(np.r_[char, c_new] * 4, 20)
    assert set(groups[len(char):]).isdisjoint(groups[:len(char)])
    # Through load: new classes before the rotations, held-out alphabets unchanged.
    X0, y0, held0 = wa.load(background_only_home, True, 15, rotations=False)
    X1, y1, held1 = wa.load(background_only_home, True, 15, splice=2)
    n_blocks = (np.unique(np.unique(y0) // 20, return_counts=True)[1] >= 2).sum()
    assert len(np.unique(y1)) == 4 * (len(np.unique(y0)) + 2 * n_blocks)
    assert all(np.array_equal(held0[n], held1[n]) for n in held0)
    monkeypatch.setattr(wa, "machine_line", lambda: "Machine: test")
    for flags, message in ((["--splice", "21"], "--splice 21: give 0 to 20"),
                           (["--splice", "2", "--copies", "1"], "give one of them"),
                           (["--splice", "8", "--groups", "20"], "never drawn; give --splice 10")):
        with pytest.raises(SystemExit, match=message):
            wa.main(["--data-home", str(background_only_home), "--offline", "--steps", "1",
                     *flags])


def test_within_alphabet_block_fraction_keeps_whole_blocks_of_training_characters(
        background_only_home, monkeypatch):
    """--block-fraction F: meta-training on a random fraction F of the
    training characters' blocks of 20, each block whole; nothing held out
    comes back, and the held-out alphabets are the same."""
    wa = _load_benchmark("within_alphabet", monkeypatch)
    char = np.repeat(np.arange(100), 2)
    rows = char // 20 != 1  # block 1 is not for training
    kept = wa.keep_blocks(char, rows, 0.5, width=20, seed=0)
    assert not (kept & ~rows).any()
    blocks = np.unique(char[kept] // 20)
    assert len(blocks) == 2 and 1 not in blocks
    assert np.array_equal(kept, np.isin(char // 20, blocks))  # whole blocks
    np.testing.assert_array_equal(kept, wa.keep_blocks(char, rows, 0.5, width=20, seed=0))
    X, y, held = wa.load(background_only_home, True, 15, rotations=False)
    Xh, yh, held_h = wa.load(background_only_home, True, 15, rotations=False,
                             block_fraction=0.5)
    n_blocks = len(np.unique(y // 20))
    assert len(np.unique(yh // 20)) == round(0.5 * n_blocks)
    assert set(np.unique(yh)) < set(np.unique(y))
    assert all(np.array_equal(held[n], held_h[n]) for n in held)
    monkeypatch.setattr(wa, "machine_line", lambda: "Machine: test")
    with pytest.raises(SystemExit, match="--block-fraction 0: give a fraction in"):
        wa.main(["--data-home", str(background_only_home), "--offline", "--steps", "1",
                 "--block-fraction", "0"])


def test_within_alphabet_groups_are_blocks_of_characters_at_one_rotation(
        background_only_home, monkeypatch, capsys):
    wa = _load_benchmark("within_alphabet", monkeypatch)
    y = np.arange(400)  # characters 0..99, 4 rotations each
    groups = wa.block_groups(y, 20)
    for g in np.unique(groups):
        members = y[groups == g]
        assert len(members) == 20 and len(set(members % 4)) == 1
        assert np.ptp(members // 4) == 19  # 20 consecutive characters
    y = np.arange(800)  # with mirror images: 8 variants of each character
    groups = wa.block_groups(y, 20, n_variants=8)
    for g in np.unique(groups):
        members = y[groups == g]
        assert len(members) == 20 and len(set(members % 8)) == 1
        assert np.ptp(members // 8) == 19
    monkeypatch.setattr(wa, "machine_line", lambda: "Machine: test")
    out = wa.main(["--data-home", str(background_only_home), "--offline", "--episodes", "2",
                   "--threads", "1", "--image-size", "15", "--steps", "2", "--groups", "20",
                   "--mirror",
                   "--set", "n_filters=4", "--set", "meta_batch_size=2",
                   "--set", "meta_batches_per_epoch=2"])
    assert out["n_steps"] == 2 and "2 meta-steps in" in capsys.readouterr().out
    X4, y4, _ = wa.load(str(background_only_home), True, 15)
    X8, y8, _ = wa.load(str(background_only_home), True, 15, mirror=True)
    assert len(np.unique(y8)) == 2 * len(np.unique(y4)) and len(X8) == 2 * len(X4)


def test_presets_are_valid_estimator_configurations():
    """Every preset names real parameters only, and fits as it is (a tiny
    budget and backbone; images for the image presets)."""
    from fomaml_sklearn import FOMAMLClassifier, presets

    names = set(FOMAMLClassifier().get_params())
    for key, preset in presets.PRESETS.items():
        assert set(preset) <= names, (key, set(preset) - names)
        rng = np.random.default_rng(0)
        if preset["module"] == "conv4":
            X = rng.random((120, 1, 12, 12), dtype=np.float32)
        else:
            X = rng.random((120, 16), dtype=np.float32)
        y = np.repeat(np.arange(12), 10)
        clf = FOMAMLClassifier(**{**preset, "n_filters": 4, "hidden_layer_sizes": (8,),
                                  "max_epochs": 1, "meta_batches_per_epoch": 2,
                                  "n_ways": 3, "meta_batch_size": 2},
                               random_state=0, device="cpu")
        clf.fit(X, y)
        assert clf.n_meta_steps_ == 2


def test_the_main_job_reads_the_omniglot_preset(fake_omniglot_home, monkeypatch, capsys):
    """benchmarks/few_shot.py keeps no copy of the configuration: every
    setting it does not override comes from presets.OMNIGLOT."""
    from fomaml_sklearn import presets

    few_shot = _load_benchmark("few_shot", monkeypatch)
    monkeypatch.setattr(few_shot, "machine_line", lambda: "Machine: test", raising=False)
    fits = []
    original = few_shot.FOMAMLClassifier.fit

    def spy(self, *args, **kwargs):
        fits.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(few_shot.FOMAMLClassifier, "fit", spy)
    monkeypatch.setitem(presets.OMNIGLOT, "meta_batch_size", 3)  # seen through the preset
    few_shot.main(["--data-home", str(fake_omniglot_home), "--offline", "--steps", "50",
                   "--episodes", "3", "--threads", "1"])
    params = fits[0].get_params()
    for key, value in presets.OMNIGLOT.items():
        if key not in ("max_epochs", "test_shift"):  # the budget; scored as an extra row
            assert params[key] == value, key
    assert fits[0].n_meta_steps_ == 50


def test_preset_speed_times_each_variant_of_the_preset(monkeypatch, capsys):
    speed = _load_benchmark("preset_speed", monkeypatch)
    monkeypatch.setattr(speed, "machine_line", lambda: "Machine: test")
    assert speed.parse_variant("n_inner_steps=0,lr=0.001") == {"n_inner_steps": 0, "lr": 0.001}
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        speed.parse_variant("n_inner_steps")
    medians = speed.main(["--preset", "omniglot-within-alphabet", "--steps", "2",
                          "--repeats", "1", "--threads", "1", "--image-size", "12",
                          "--variant", "n_inner_steps=1", "--variant", "n_inner_steps=0"])
    assert set(medians) == {"n_inner_steps=1", "n_inner_steps=0"}
    assert all(m > 0 for m in medians.values())
    text = capsys.readouterr().out
    assert "PRESETS.OMNIGLOT_WITHIN_ALPHABET" not in text
    assert "presets.OMNIGLOT_WITHIN_ALPHABET, 2 meta-steps per fit" in text
    assert "n_inner_steps=0" in text and "1.00x" in text
