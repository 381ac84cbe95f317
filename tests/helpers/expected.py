"""Settings written out by hand as independent oracles (never read from slkd).

``SLD_NODE``: the released SLD code's settings, the keys of the ``SLD`` config node
(Limantoro et al. 2025, and the released ``Swapped-Logit-Distillation`` code's CIFAR-100
configs).
"""

SLD_NODE = {
    "CE_WEIGHT": 0.1,
    "KD_WEIGHT": 0.9,
    "TEMPERATURES": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    "GAMMA": 150,
    "STUDENT_SWAP": True,
    "DETACH_PSEUDO_TEACHER": False,
}

# SLD keys that moved to another node, kept (null) only to say so.
MOVED_SLD_KEYS = {"STRONG_VIEW": "PROTOCOL.VIEWS", "TEACHER_SWAP": "LOGITS.TEACHER_SWAP"}
