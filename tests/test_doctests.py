"""The ``>>>`` examples in the public loss functions' docstrings run and print what they show."""

import doctest

import pytest

from slkd.losses import logits, mlkd, sld

EXAMPLES = {
    sld: {"swap_logits", "sld_terms", "sld_loss", "SLDLoss"},
    mlkd: {"kd_term", "class_consistency", "batch_consistency", "mlkd_losses"},
    logits: {"standardize_logits", "transform_logits"},
}


@pytest.mark.parametrize("module", list(EXAMPLES), ids=lambda module: module.__name__)
def test_docstring_examples_run(module):
    finder = doctest.DocTestFinder()
    tests = [test for test in finder.find(module) if test.examples]
    assert {test.name.rsplit(".", 1)[-1] for test in tests} >= EXAMPLES[module]
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
