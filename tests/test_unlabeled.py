"""Images without labels: the distillation term only, checked by the doctor, never in validation or test."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdistill.config import DataConfig, TrainConfig, load_config
from kdistill.data import Batch, load_dataset
from kdistill.data.doctor import unlabeled_findings
from kdistill.distill import build_method, kd_loss
from kdistill.errors import ConfigError
from kdistill.distill.inputs import check_unlabeled_method, student_data, view_bank


def write_image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (16, 16), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)


@pytest.fixture
def folders(tmp_path):
    root, seed = tmp_path / "data", 0
    for split, count in (("train", 14), ("test", 4)):
        for label in ("NORMAL", "PNEUMONIA"):
            for i in range(count):
                seed += 1
                write_image(root / split / label / f"person{seed}_x_{i}.png", seed)
    unlabeled = tmp_path / "unlabeled"
    for i in range(5):
        write_image(unlabeled / f"batch{i % 2}" / f"u{i}.png", 1000 + i)
    test_file = sorted((root / "test" / "NORMAL").iterdir())[0]
    shutil.copy(test_file, unlabeled / "copy_of_test.png")
    (unlabeled / "broken.png").write_bytes(b"not an image")
    return root, unlabeled, test_file


def load(root, **kwargs):
    return load_dataset(DataConfig(root=str(root), input_size=16, channels=1, val_fraction=0.2,
                                   cache_dir=None, **kwargs))


def test_doctor_reports_unreadable_files_and_copies_of_test_images(folders):
    root, unlabeled, test_file = folders
    found = unlabeled_findings(unlabeled, {"test": sorted((root / "test").rglob("*.png"))})
    assert [item["same_as"] for item in found["duplicates_of_held_out"]] == [str(test_file)]
    assert found["duplicates_of_held_out"][0]["split"] == "test"
    assert [item["path"] for item in found["unreadable"]] == [str(unlabeled / "broken.png")]
    assert len(found["images"]) == 6  # five new images and the copy


def test_unlabeled_images_never_enter_validation_or_test(folders):
    root, unlabeled, _ = folders
    data = load(root, unlabeled=str(unlabeled))
    assert len(data.unlabeled) == 5  # the copy of a test image and the broken file are left out
    assert (data.unlabeled.labels == -1).all()
    pool = set(data.unlabeled.names)
    assert not pool & set(data.val.names) and not pool & set(data.test.names)
    plain = load(root)
    assert data.val.names == plain.val.names and data.test.names == plain.test.names


def test_labeled_fraction_moves_whole_patients_to_the_pool(folders):
    root, _, _ = folders
    data, plain = load(root, labeled_fraction=0.25), load(root)
    assert 0 < len(data.train) < len(plain.train)
    assert len(data.train) + len(data.unlabeled) == len(plain.train)
    assert abs(len(data.train) / len(plain.train) - 0.25) < 0.1
    assert not set(data.train.groups) & set(data.unlabeled.groups)
    assert data.val.names == plain.val.names and data.test.names == plain.test.names


def test_only_the_distilled_student_trains_on_unlabeled_images_and_banks_agree(folders):
    root, unlabeled, _ = folders
    config = load_config(None, [f"data.root={root}", "data.channels=1", "data.input_size=16",
                                "distill.bank_views=3", "data.augment.scale=[0.5,1]"])
    data = load(root, unlabeled=str(unlabeled))
    baseline, distilled = student_data(config, data, "baseline"), student_data(config, data, "distilled")
    assert len(baseline.train) == len(data.train)
    assert len(distilled.train) == len(data.train) + len(data.unlabeled)
    assert torch.equal(distilled.bank[:len(data.train)], baseline.bank)  # the same bank, same rows
    assert len(view_bank(config, data)) == len(distilled.train)


def test_kd_uses_only_the_distillation_term_on_unlabeled_rows():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 2, generator=generator, requires_grad=True)
    teacher_logits = torch.randn(4, 2, generator=generator)
    labels = torch.tensor([0, -1, 1, -1])
    batch = Batch(torch.zeros(4, 1), labels, torch.arange(4), torch.zeros(4, dtype=torch.bool))
    method = build_method("kd", alpha=0.5, temperature=2.0)
    out = method(batch, lambda images: logits, lambda b: teacher_logits)
    expected = 0.5 * F.cross_entropy(logits[[0, 2]], labels[[0, 2]]) + 0.5 * kd_loss(logits, teacher_logits, 2.0)
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    # A CE over every row (the unlabelled ones given some label) would differ.
    guessed = 0.5 * F.cross_entropy(logits, labels.clamp(min=0)) + 0.5 * kd_loss(logits, teacher_logits, 2.0)
    assert not torch.allclose(out["loss"], guessed, atol=1e-4)
    # No labelled row at all: the distillation term alone.
    none = Batch(torch.zeros(4, 1), torch.full((4,), -1), torch.arange(4), torch.zeros(4, dtype=torch.bool))
    alone = method(none, lambda images: logits, lambda b: teacher_logits)["loss"]
    assert torch.allclose(alone, 0.5 * kd_loss(logits, teacher_logits, 2.0), atol=1e-6)


def test_methods_that_need_labels_say_so(folders):
    root, unlabeled, _ = folders
    data = load(root, unlabeled=str(unlabeled))
    config = load_config(None, [f"data.root={root}", "distill.method=article"])
    with pytest.raises(ConfigError, match="needs a label on every image"):
        check_unlabeled_method(config, student_data(config, data, "distilled"))
    check_unlabeled_method(load_config(None, [f"data.root={root}"]), student_data(config, data, "distilled"))
    # A comparison is checked for every method it lists, not only distill.method (kd).
    compared = load_config(None, [f"data.root={root}", "distill.methods=[kd,dkd]"])
    with pytest.raises(ConfigError, match="distill.methods: dkd needs a label"):
        check_unlabeled_method(compared, student_data(compared, data, "distilled"))


def test_training_accuracy_counts_labelled_rows_only(image_root, tmp_path):
    """Unlabelled rows (label -1) have no right answer: a method that is right on every labelled
    row scores training accuracy 1.0, however many unlabelled rows the epoch holds."""
    import dataclasses

    from kdistill.data import load_dataset
    from kdistill.engine.loop import fit
    from kdistill.models import build_model
    from kdistill.models.checkpoint import architecture

    data = load_dataset(DataConfig(root=str(image_root), input_size=16, val_fraction=0.25, test_fraction=0.25))
    labels = data.train.labels.clone()
    labels[::2] = -1  # half the training rows lose their label
    data = dataclasses.replace(data, train=dataclasses.replace(data.train, labels=labels))

    def right_on_labelled_rows(batch, model, teacher):
        logits = model(batch.images)
        perfect = torch.nn.functional.one_hot(batch.labels.clamp(min=0), 2).float() * 10
        return {"loss": logits.sum() * 0, "logits": perfect}

    model = build_model("reference_student", 2, input_size=16)
    mean, std = data.normalization
    meta = {"architecture": architecture("reference_student", 2, 16, 3, {}), "classes": data.classes,
            "input_size": 16, "channels": data.channels, "mean": list(mean), "std": list(std)}
    result = fit(model, right_on_labelled_rows, data, name="student", checkpoint_dir=tmp_path / "c",
                 checkpoint_meta=meta, resume_dir=tmp_path / "r", train=TrainConfig(epochs=1, batch_size=8),
                 progress=False)
    assert result.history[0]["train_accuracy"] == 1.0
