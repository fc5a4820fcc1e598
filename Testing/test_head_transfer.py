"""``finetune.head_init: attributes``: a task head starts as its question's linear answer, checked
against the question head's weights computed by hand (numpy), in training and evaluation mode."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from renalclip_lib.config import load_config  # noqa: E402
from renalclip_lib.errors import ConfigError  # noqa: E402
from renalclip_lib.models import AttributeHead, ClassifierHead  # noqa: E402
from renalclip_lib.questionnaire import QUESTION_BY_KEY  # noqa: E402
from renalclip_lib.training.head_transfer import transfer_question_heads  # noqa: E402

IN = 32
EPS = 1e-5   # BatchNorm1d's default


def _question_heads(seed=0):
    torch.manual_seed(seed)
    return {f"text_label_{QUESTION_BY_KEY[k].release_id}": AttributeHead(QUESTION_BY_KEY[k].n_classes, in_dim=IN)
            for k in ("benign_malignant", "size", "density")}


def test_the_malignancy_head_starts_as_question_12s_standardised_benign_malignant_score():
    heads = _question_heads()
    torch.manual_seed(1)
    task_heads = {"malignancy": ClassifierHead(2, in_dim=IN), "aggressiveness": ClassifierHead(2, in_dim=IN)}
    untouched = {k: v.clone() for k, v in task_heads["aggressiveness"].state_dict().items()}
    assert transfer_question_heads(task_heads, heads, "att.pt") == ["malignancy"]
    x = torch.randn(64, IN)
    w = heads["text_label_18"].block_forward[2].weight.detach().numpy()
    # options: 1 highly likely benign, 2 highly likely malignant, 3 more likely benign, 4 more likely malignant
    direction = ((w[2] + w[4]) / 2 - (w[1] + w[3]) / 2) / 2
    s = x.numpy() @ direction
    expected = 2 * (s - s.mean()) / np.sqrt(s.var() + EPS)
    head = task_heads["malignancy"].train()
    with torch.no_grad():
        logits = head(x).numpy()
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], expected, atol=1e-4)
    for k, v in task_heads["aggressiveness"].state_dict().items():
        assert torch.equal(v, untouched[k])


def test_the_radius_head_starts_from_question_3s_size_classes_in_evaluation_mode():
    heads = _question_heads(seed=2)
    task_heads = {"renal_R": ClassifierHead(3, in_dim=IN)}
    assert transfer_question_heads(task_heads, heads, "att.pt") == ["renal_R"]
    w = heads["text_label_3"].block_forward[2].weight.detach().numpy()
    classes = np.stack([w[1], w[2], (w[3] + w[4]) / 2])    # <= 4 cm, 4-7 cm, > 7 cm (7-10 and > 10)
    x = torch.randn(16, IN)
    with torch.no_grad():
        logits = task_heads["renal_R"].eval()(x).numpy()   # fresh running statistics: mean 0, variance 1
    expected = x.numpy() @ classes.T / np.sqrt(1 + EPS)
    np.testing.assert_allclose(logits - logits[:, :1], expected - expected[:, :1], atol=1e-4)


def test_a_checkpoint_without_the_question_head_is_one_clear_error():
    heads = _question_heads()
    del heads["text_label_18"]
    with pytest.raises(ConfigError, match=r"att\.pt.*no question head 'text_label_18' \(benign_malignant\)"):
        transfer_question_heads({"malignancy": ClassifierHead(2, in_dim=IN)}, heads, "att.pt")


def test_head_init_takes_random_or_attributes(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("finetune:\n  head_init: questions\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="finetune: head_init must be 'random' or 'attributes'"):
        load_config(cfg)
    assert load_config("Resources/configs/demo.yaml").finetune.head_init in ("random", "attributes")
