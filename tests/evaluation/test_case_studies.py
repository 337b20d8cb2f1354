import pandas as pd
import pytest

from hf_fga.evaluation.case_studies import TRANSMM_CONFIG, select_improved_images

FGA = "fga|combined|1|0.5|10"


def _results(rows):
    frame = []
    for image, (tm, fga) in rows.items():
        for config, (saco, fc, pf) in ((TRANSMM_CONFIG, tm), (FGA, fga)):
            frame.append(
                {
                    "image_id": image,
                    "index": int(image[1:]),
                    "config": config,
                    "preset": "papers",
                    "saco": saco,
                    "faithfulness_correlation": fc,
                    "pixel_flipping": pf,
                }
            )
    return pd.DataFrame(frame)


def test_select_improved_images_puts_all_improved_first_by_mean_rank():
    results = _results(
        {
            "i0": ((0.5, 0.2, 0.5), (0.9, 0.6, 0.1)),  # best on every metric
            "i1": ((0.5, 0.2, 0.5), (0.6, 0.3, 0.4)),  # improves all three, a little
            "i2": ((0.5, 0.2, 0.5), (1.0, 0.9, 0.6)),  # large SaCo/FC gains but Pixel Flipping worse
            "i3": ((0.5, 0.2, 0.5), (0.4, 0.1, 0.6)),  # worse everywhere
        }
    )
    chosen = select_improved_images(results, FGA, count=3)
    assert list(chosen.index) == ["i0", "i1", "i2"]
    assert list(chosen["all_improved"]) == [True, True, False]
    assert chosen.loc["i0", "d_pixel_flipping"] == pytest.approx(0.4)  # oriented: larger is better
    assert list(chosen["index"]) == [0, 1, 2]
    assert chosen["rank_score"].between(0, 1).all()


def test_select_improved_images_errors_name_the_problem():
    results = _results({"i0": ((0.5, 0.2, 0.5), (0.9, 0.6, 0.1))})
    with pytest.raises(ValueError, match="has no results for preset 'thesis'"):
        select_improved_images(results, FGA, preset="thesis")
    with pytest.raises(ValueError, match="unknown metric"):
        select_improved_images(results, FGA, metrics=("accuracy",))
