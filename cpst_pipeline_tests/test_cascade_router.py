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
