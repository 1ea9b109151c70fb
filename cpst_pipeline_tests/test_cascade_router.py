import numpy as np
import pytest

from cpst_pipeline.cascade.router import DomainRouter


@pytest.fixture
def clustered():
    rng = np.random.default_rng(0)
    centres = {"metal": np.zeros(8), "tile": np.full(8, 6.0), "steel": np.r_[np.full(4, -6.0), np.zeros(4)]}
    embeddings, domains = [], []
    for name, centre in centres.items():
        embeddings.append(centre + rng.normal(0, 1, (60, 8)))
        domains += [name] * 60
    return np.concatenate(embeddings), domains, centres


def test_routes_each_domain_to_its_own_centroid(clustered):
    embeddings, domains, centres = clustered
    router = DomainRouter.fit(embeddings, domains)
    rng = np.random.default_rng(1)
    for name, centre in centres.items():
        probes = centre + rng.normal(0, 1, (20, 8))
        routed = router.route(probes)
        assert sum(r == name for r in routed) >= 19


def test_far_away_image_is_unknown_not_forced_into_a_domain(clustered):
    embeddings, domains, _ = clustered
    router = DomainRouter.fit(embeddings, domains)
    assert router.route(np.full((1, 8), 40.0)) == [None]


def test_round_trip_through_json(clustered, tmp_path):
    embeddings, domains, _ = clustered
    router = DomainRouter.fit(embeddings, domains)
    loaded = DomainRouter.load(router.save(tmp_path / "router.json"))
    assert loaded.domains == router.domains
    np.testing.assert_allclose(loaded.distances(embeddings[:5]), router.distances(embeddings[:5]))


def test_refuses_to_fit_without_images():
    with pytest.raises(ValueError, match="without training images"):
        DomainRouter.fit(np.zeros((0, 4)), [])


def test_an_image_of_another_domain_is_unlike_the_domain_it_is_given(clustered, tmp_path):
    embeddings, domains, centres = clustered
    router = DomainRouter.load(DomainRouter.fit(embeddings, domains).save(tmp_path / "router.json"))
    rng = np.random.default_rng(2)
    own = centres["metal"] + rng.normal(0, 1, (200, 8))
    flagged = [router.unlike_domain(e, "metal") for e in own]
    assert sum(reason is not None for reason in flagged) <= 4  # about 1 % of a domain's own images
    reason = router.unlike_domain(centres["tile"], "metal")
    assert reason is not None and reason.startswith("unlike every training image of domain metal: distance")
    assert router.unlike_domain(centres["tile"], "tile") is None


def test_copies_of_one_part_do_not_shrink_the_radius():
    rng = np.random.default_rng(3)
    parts = rng.normal(0, 1, (30, 8))
    embeddings = np.repeat(parts, 2, axis=0)  # every part photographed twice, identically
    groups = [str(i // 2) for i in range(60)]
    grouped = DomainRouter.fit(embeddings, ["metal"] * 60, groups).novelty.radii["metal"]
    ungrouped = DomainRouter.fit(embeddings, ["metal"] * 60).novelty.radii["metal"]
    assert ungrouped < 0.01 * grouped  # without groups each copy is the other's neighbour
