import pytest

from hf_fga.evaluation.arguments import EvaluationArguments
from hf_fga.evaluation.configuration import (
    REFERENCE,
    EvaluationConfiguration,
    expand_grid,
    parse_floats,
    parse_layer_sets,
    parse_list,
)


def test_parse_layer_sets():
    assert parse_layer_sets("4;5;6;4,5;4,5,6") == [(4,), (5,), (6,), (4, 5), (4, 5, 6)]
    assert parse_layer_sets("5,4; 4,5 ;") == [(4, 5)]
    assert parse_layer_sets(None) == [()] and parse_layer_sets("default") == [()]
    assert parse_layer_sets([[6, 4]]) == [(4, 6)]
    with pytest.raises(ValueError, match="layer_sets"):
        parse_layer_sets("4;x")
    with pytest.raises(ValueError, match="negative"):
        parse_layer_sets("-1")


def test_parse_lists_and_floats():
    assert parse_list("a, b,,c", "methods") == ["a", "b", "c"]
    assert parse_floats("0.1,0.5,1", "kappas") == [0.1, 0.5, 1.0]
    with pytest.raises(ValueError, match="kappas"):
        parse_floats("0.1,big", "kappas")


def test_expand_grid_counts_and_reference_first():
    grid = expand_grid(["fga", "rollout"], ["combined", "gradient"], [(4,), (4, 5)], [0.1, 0.5, 1.0], [2, 10, 50])
    assert grid[0] == REFERENCE and grid[1].method == "rollout"
    assert len(grid) == 2 + 2 * 2 * 3 * 3
    assert len({c.key for c in grid}) == len(grid)


def test_expand_grid_errors():
    with pytest.raises(ValueError, match="Unknown method"):
        expand_grid(["gradcam"])
    with pytest.raises(ValueError, match="Unknown variant"):
        expand_grid(["fga"], ["best"])
    with pytest.raises(ValueError, match="kappas"):
        expand_grid(["fga"], kappas=[0.0])
    with pytest.raises(ValueError, match="cmaxes"):
        expand_grid(["fga"], cmaxes=[1.0])


def test_columns_round_trip_and_sort_key():
    configuration = EvaluationConfiguration("fga", "centered", (4, 5), 0.5, 10.0)
    columns = configuration.columns()
    assert columns["config"] == "fga|centered|4,5|0.5|10"
    rebuilt = EvaluationConfiguration.from_columns(
        columns["method"], columns["variant"], columns["layers"], columns["kappa"], columns["cmax"]
    )
    assert rebuilt == configuration
    ordered = sorted([configuration, EvaluationConfiguration("rollout"), REFERENCE], key=lambda c: c.sort_key)
    assert [c.method for c in ordered] == ["transmm", "rollout", "fga"]


def test_docstring_examples_run():
    import doctest

    from hf_fga.evaluation import configuration

    result = doctest.testmod(configuration, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 1 and result.failed == 0


def test_configuration_key_round_trip():
    for config in expand_grid(["fga", "rollout"], ["combined"], [(4,), (1, 2)], [0.1], [50]):
        assert EvaluationConfiguration.from_key(config.key) == config
    assert EvaluationConfiguration.from_key("transmm||||") == REFERENCE
    with pytest.raises(ValueError, match="not a configuration key"):
        EvaluationConfiguration.from_key("fga|combined|1")
    with pytest.raises(ValueError, match="not a configuration key"):
        EvaluationConfiguration.from_key("fga|combined|x|0.5|10")


def test_deprecated_baseline_flag_sets_the_fill_with_a_warning():
    with pytest.warns(FutureWarning, match="--baseline is deprecated.*pass --fill"):
        arguments = EvaluationArguments(output_dir="out", baseline="zero")
    assert arguments.fill == "zero" and arguments.baseline is None
    assert EvaluationArguments(output_dir="out", fill="blur").fill == "blur"
