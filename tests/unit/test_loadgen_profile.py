"""Profile files: the bundled ones load, and every mistake names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.profile import (
    DEFAULT_PROFILE,
    PROFILES_DIR,
    Intent,
    ProfileError,
    load_profile,
    parse_profile,
    resolve_profile,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mix.yaml"
    path.write_text(text)
    return path


def test_the_bundled_profiles_load() -> None:
    for path in sorted(PROFILES_DIR.glob("*.yaml")):
        profile = load_profile(path)
        assert abs(sum(profile.outcomes.shares().values()) - 1.0) < 1e-9, path


def test_the_default_mix_has_every_kind_of_ending() -> None:
    shares = load_profile(DEFAULT_PROFILE).outcomes.shares()
    for intent in (
        Intent.PROVIDER_ACCEPTS,
        Intent.PROVIDER_REJECTS,
        Intent.PROVIDER_NEVER_ANSWERS,
        Intent.CARD_DECLINED,
        Intent.ACTION_REQUIRED,
        Intent.CUSTOMER_CANCELS,
    ):
        assert shares[intent] > 0, intent


def test_weights_are_relative() -> None:
    profile = parse_profile({"outcomes": {"provider_accepts": 3, "card_declined": 1}}, "x.yaml")
    shares = profile.outcomes.shares()
    assert shares[Intent.PROVIDER_ACCEPTS] == pytest.approx(0.75)
    assert shares[Intent.CARD_DECLINED] == pytest.approx(0.25)


def test_a_misspelt_field_is_named_with_its_file(tmp_path: Path) -> None:
    path = write(tmp_path, "outcomes:\n  provider_accept: 1\n")
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert f"{path}: outcomes.provider_accept: Extra inputs are not permitted" in str(error.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "outcomes:\n  provider_accepts: -1\n",
            r"mix\.yaml: outcomes\.provider_accepts: .*greater than or equal to 0",
            id="a-negative-weight",
        ),
        pytest.param(
            "outcomes:\n  provider_accepts: 0\n",
            r"mix\.yaml: outcomes: all weights are zero",
            id="all-weights-zero",
        ),
        pytest.param("name: x\n", r"mix\.yaml: outcomes: Field required", id="no-outcomes"),
        pytest.param(
            "outcomes: {provider_accepts: 1}\n"
            "timing:\n  provider_delay: {min_ms: 500, max_ms: 100}\n",
            r"timing\.provider_delay: max_ms \(100\) is less than min_ms \(500\)",
            id="a-delay-range-out-of-order",
        ),
        pytest.param(
            "outcomes: {provider_accepts: 1}\n"
            "population: {services: 3, providers: 1}\ncatalog: {hot_services: 4}\n",
            r"catalog\.hot_services \(4\) exceeds",
            id="more-hot-services-than-services",
        ),
        pytest.param(
            "outcomes: {provider_accepts: 1}\ncatalog: {hot_traffic_share: 0.1}\n",
            r"hot_traffic_share is set but catalog\.hot_services",
            id="hot-traffic-without-hot-services",
        ),
    ],
)
def test_a_bad_profile_is_refused_naming_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError, match=problem):
        load_profile(path)


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "outcomes: {provider_accepts: x}\npopulation: {customers: 0}\ncatalog: {currency: eur}\n",
    )
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    message = str(error.value)
    for field in ("outcomes.provider_accepts", "population.customers", "catalog.currency"):
        assert f"{path}: {field}:" in message


def test_invalid_yaml_says_where(tmp_path: Path) -> None:
    path = write(tmp_path, "outcomes:\n  provider_accepts: [1\n")
    with pytest.raises(ProfileError, match=r"mix\.yaml: invalid YAML at line \d+ column \d+"):
        load_profile(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"nothing\.yaml: cannot read"):
        load_profile(tmp_path / "nothing.yaml")


def test_a_list_at_the_top_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"mix\.yaml: the top level must be a mapping"):
        load_profile(write(tmp_path, "- 1\n"))


def test_bundled_names_resolve_to_their_files() -> None:
    assert resolve_profile("default") == DEFAULT_PROFILE
    assert resolve_profile("some/where.yaml") == Path("some/where.yaml")
