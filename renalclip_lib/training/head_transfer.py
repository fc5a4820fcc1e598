"""Fine-tuning heads that start from attribute pre-training's answer to the same question.

Attribute pre-training already answers "is the mass likely benign or malignant?" (question 12)
and "size of the mass" (question 3), learnt from every pre-training report. Fine-tuning learns
malignancy again from the few benign masses of its training set. With ``finetune.head_init:
attributes`` the release's MLP head (Linear -> BatchNorm -> ReLU -> Linear) instead starts as that
question's linear answer. Task class c reads the mean of its options' question weights w_c; hidden
unit c holds d_c = w_c - mean(w) and unit C + c holds -d_c; the output takes ReLU(h_c) - ReLU(-h_c)
= h_c. So before any step the head gives each class BatchNorm's standardised d_c . x: for a binary
task, exactly the question head's ranking of patients. The other hidden units start with zero
output weight and learn from there. Tasks without a matching question keep the random head.

Usage: ``transferred = transfer_question_heads(model.classifiers, load_checkpoint(path).classifiers, path)``
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..models import AttributeHead, ClassifierHead
from ..questionnaire import QUESTION_BY_KEY
from ..tasks import TASKS

# Task -> (question key, the question's options behind each task class, in the task's class order).
TASK_QUESTIONS: dict[str, tuple[str, tuple[tuple[str, ...], ...]]] = {
    "malignancy": ("benign_malignant", (("highly likely benign", "more likely benign"),
                                        ("highly likely malignant", "more likely malignant"))),
    "renal_R": ("size", (("<= 4 cm",), ("> 4 cm and <= 7 cm",), ("> 7 cm and <= 10 cm", "> 10 cm"))),
}


def class_directions(head: AttributeHead, key: str, groups) -> torch.Tensor:
    """(C, in) rows w_c = mean of question ``key``'s weights over class c's options, centred over c."""
    options = QUESTION_BY_KEY[key].options
    weight = head.block_forward[2].weight.detach()
    rows = torch.stack([weight[[options.index(o) for o in opts]].mean(0) for opts in groups])
    return rows - rows.mean(0, keepdim=True)


@torch.no_grad()
def init_from_directions(head: ClassifierHead, directions: torch.Tensor) -> None:
    """Set ``head`` so that class c's logit starts as BatchNorm's standardised ``directions[c] . x``."""
    n = directions.shape[0]
    first, norm, last = head.block_forward[2], head.block_forward[3], head.block_forward[6]
    if last.out_features != n or first.out_features < 2 * n:
        raise ValueError(f"a head of {last.out_features} classes and {first.out_features} hidden units "
                         f"cannot start from {n} directions")
    first.weight[:n] = directions
    first.weight[n:2 * n] = -directions
    norm.reset_parameters()
    last.weight.zero_()
    last.weight[:, :n] = torch.eye(n)
    last.weight[:, n:2 * n] = -torch.eye(n)
    last.bias.zero_()


def transfer_question_heads(classifiers, source_heads: dict, source) -> list[str]:
    """Start every head of ``classifiers`` that has a question in ``TASK_QUESTIONS`` from that
    question's head in ``source_heads``; returns the tasks so started. ``source`` names the
    checkpoint in the error when it holds no question heads."""
    started = []
    for task, head in classifiers.items():
        if task not in TASK_QUESTIONS:
            continue
        key, groups = TASK_QUESTIONS[task]
        name = QUESTION_BY_KEY[key].head_name
        question_head = source_heads.get(name)
        if not isinstance(question_head, AttributeHead):
            raise ConfigError(str(source), f"finetune.head_init 'attributes': no question head '{name}' "
                                           f"({key}) in this checkpoint; start from an attribute checkpoint")
        if len(groups) != len(TASKS[task].classes):
            raise ValueError(f"{task}: {len(groups)} option groups for {len(TASKS[task].classes)} classes")
        init_from_directions(head, class_directions(question_head, key, groups))
        started.append(task)
    return started
