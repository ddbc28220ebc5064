"""Classification and retrieval metrics against hand-checkable cases and sklearn."""
import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from trainer.evaluation.metrics import (MetricsInputError, classification_metrics, d_prime,
                                        top1_accuracy)
from trainer.evaluation.retrieval import (RetrievalInputError, class_ranks, cosine_similarity,
                                          instance_ranks, relevance_matrix, retrieval_metrics,
                                          select_per_class)


def _multilabel(rng, n=60, c=6):
    targets = (rng.random((n, c)) < 0.3).astype(int)
    scores = targets * rng.random((n, c)) + rng.random((n, c))  # informative but imperfect
    return scores, targets


# --- classification -----------------------------------------------------------------------------

def test_map_is_mean_of_sklearn_per_class_ap():
    scores, targets = _multilabel(np.random.default_rng(0))
    got = classification_metrics(scores, targets)
    want = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(6)])
    assert got.mAP == pytest.approx(want)
    assert got.ap_classes == 6 and got.excluded_no_positives == []
    assert 0.5 < got.mAP < 1.0


def test_mauc_and_d_prime_follow_sklearn_and_the_normal_ppf():
    scores, targets = _multilabel(np.random.default_rng(1))
    got = classification_metrics(scores, targets)
    want = np.mean([roc_auc_score(targets[:, c], scores[:, c]) for c in range(6)])
    assert got.mAUC == pytest.approx(want)
    assert got.d_prime == pytest.approx(norm.ppf(want) * np.sqrt(2))
    assert d_prime(0.5) == pytest.approx(0.0)


def test_perfect_scores_give_one_and_chance_scores_give_about_prevalence():
    rng = np.random.default_rng(2)
    targets = (rng.random((2000, 4)) < 0.25).astype(int)
    perfect = classification_metrics(targets + 0.01 * rng.random(targets.shape), targets)
    assert perfect.mAP == pytest.approx(1.0) and perfect.mAUC == pytest.approx(1.0)
    chance = classification_metrics(rng.random(targets.shape), targets)
    assert chance.mAP == pytest.approx(0.25, abs=0.04)
    assert chance.mAUC == pytest.approx(0.5, abs=0.04)


def test_classes_without_positives_are_excluded_and_reported():
    rng = np.random.default_rng(3)
    scores, targets = _multilabel(rng)
    targets[:, 2] = 0            # no positive: AP and AUC undefined
    targets[:, 4] = 1            # all positive: AUC undefined, AP defined (= 1)
    got = classification_metrics(scores, targets)
    assert got.excluded_no_positives == [2] and got.excluded_no_negatives == [4]
    assert got.ap_classes == 5 and got.auc_classes == 4
    assert np.isnan(got.per_class_ap[2]) and got.per_class_ap[4] == pytest.approx(1.0)
    keep = [0, 1, 3, 4]
    want = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in keep + [5]])
    assert got.mAP == pytest.approx(want)


def test_top1_counts_argmax_among_labels_and_skips_unlabelled_clips():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    targets = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0]])
    # clip 0 right, clip 1 wrong, clip 2 wrong (argmax 0 not a label), clip 3 unlabelled
    assert top1_accuracy(scores, targets) == pytest.approx(1 / 3)
    targets[2] = [1, 1, 0]
    assert top1_accuracy(scores, targets) == pytest.approx(2 / 3)


@pytest.mark.parametrize("scores,targets,match", [
    (np.zeros((3, 2)), np.zeros((3, 3)), "same shape"),
    (np.zeros((0, 2)), np.zeros((0, 2)), "no samples"),
    (np.array([[np.nan, 0.0]]), np.array([[1, 0]]), "non-finite"),
    (np.zeros((1, 2)), np.array([[0.5, 0.5]]), "multi-hot"),
])
def test_bad_inputs_raise_clear_errors(scores, targets, match):
    with pytest.raises(MetricsInputError, match=match):
        classification_metrics(scores, targets)


# --- retrieval ----------------------------------------------------------------------------------

def test_perfect_ranking_gives_recall_one_and_reversed_gives_median_rank_n():
    n = 9
    perfect = np.eye(n) + 0.001 * np.arange(n)[None, :]
    ranks = instance_ranks(perfect)
    assert ranks.tolist() == [1] * n
    # query i scores its own match lowest of all: rank N for every query
    reversed_ = -np.eye(n)
    assert instance_ranks(reversed_).tolist() == [n] * n
    audio = np.eye(n)
    got = retrieval_metrics(audio, -audio + 1e-3)  # each visual vector points away from its audio
    assert got["a2v_medr"] == n and got["a2v_r1"] == 0.0


def test_identical_embeddings_get_worst_ranks_not_perfect_ones():
    emb = np.ones((6, 4))
    got = retrieval_metrics(emb, emb, labels=[[0], [0], [1], [1], [2], [2]])
    assert got["a2v_r1"] == 0.0 and got["a2v_medr"] == 6
    # the best same-class clip ties with the 4 other-class clips: rank 5
    assert got["a2v_class_r1"] == 0.0 and got["a2v_class_medr"] == 5


def test_paired_embeddings_retrieve_themselves_both_ways():
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(40, 16))
    got = retrieval_metrics(emb, emb + 0.01 * rng.normal(size=emb.shape))
    for name in ("a2v_r1", "v2a_r1", "a2v_r5", "v2a_r10"):
        assert got[name] == 1.0
    assert got["a2v_medr"] == 1.0 and got["v2a_medr"] == 1.0


def test_random_embeddings_land_near_chance():
    rng = np.random.default_rng(5)
    n, classes = 400, 8
    labels = [[i % classes] for i in range(n)]
    got = retrieval_metrics(rng.normal(size=(n, 32)), rng.normal(size=(n, 32)), labels)
    assert got["a2v_r10"] == pytest.approx(10 / n, abs=0.03)
    assert got["a2v_medr"] == pytest.approx(n / 2, rel=0.2)
    assert got["a2v_class_r1"] == pytest.approx(1 / classes, abs=0.06)


def test_class_level_recall_counts_any_clip_of_a_shared_class():
    # 4 clips, classes [0], [0], [1], [0, 1]. Query 0 scores clip 1 (same class) highest.
    sim = np.array([[0.1, 0.9, 0.5, 0.0],
                    [0.2, 0.1, 0.8, 0.3],   # best relevant (0 or 3) = 0.3 < 0.8 (clip 2, class 1)
                    [0.0, 0.1, 0.2, 0.9],   # clip 3 shares class 1
                    [0.4, 0.5, 0.6, 0.7]])  # every clip shares a class with [0, 1]
    rel = relevance_matrix([[0], [0], [1], [0, 1]])
    assert rel[3].all() and not rel[0, 2]
    assert class_ranks(sim, rel).tolist() == [1, 2, 1, 1]
    # instance ranks: query 0's match (0.1) is beaten by 0.9 and 0.5 -> rank 3
    assert instance_ranks(sim).tolist() == [3, 4, 2, 1]


def test_cosine_similarity_ignores_vector_length():
    a = np.array([[1.0, 0.0], [0.0, 3.0]])
    sim = cosine_similarity(a * 5, a)
    assert sim == pytest.approx(np.eye(2))
    with pytest.raises(RetrievalInputError):
        cosine_similarity(np.zeros((2, 3)), np.zeros((2, 4)))


def test_subset_is_deterministic_balanced_and_independent_of_read_order():
    rng = np.random.default_rng(6)
    keys = [f"clip{i:03d}" for i in range(50)]
    labels = [[int(c)] for c in rng.integers(0, 4, size=50)]
    labels[0] = [0, 1]
    first = select_per_class(keys, labels, per_class=3, seed=0)
    assert len(first.indices) == 12 and first.short_classes == {}
    for c in range(4):
        assert sum(c in labels[i] for i in first.indices) >= 3
    assert first.indices == select_per_class(keys, labels, per_class=3, seed=0).indices
    perm = rng.permutation(50)
    shuffled = select_per_class([keys[i] for i in perm], [labels[i] for i in perm], 3, seed=0)
    assert sorted(keys[perm[i]] for i in shuffled.indices) == sorted(keys[i] for i in first.indices)
    assert select_per_class(keys, labels, 3, seed=1).indices != first.indices


def test_subset_reports_classes_with_too_few_clips():
    keys = ["a", "b", "c", "d"]
    got = select_per_class(keys, [[0], [0], [0], [1]], per_class=2)
    assert got.short_classes == {1: 1} and len(got.indices) == 3
    with pytest.raises(RetrievalInputError, match="duplicate"):
        select_per_class(["a", "a"], [[0], [0]], per_class=1)


def test_retrieval_header_gives_the_real_clips_per_class():
    """--per-class 5 on 2 clips per class: the header says 2 per class (and what was asked)."""
    from trainer.evaluation.embeddings import EmbeddingTable
    from trainer.evaluation.protocols import retrieval_payload
    rng = np.random.default_rng(0)
    labels = [[0], [0], [1], [1], [2], [2]]
    table = EmbeddingTable([f"k{i}" for i in range(6)], labels, rng.normal(size=(6, 8)).astype(np.float32),
                           rng.normal(size=(6, 8)).astype(np.float32), {})
    _, tables = retrieval_payload(table, per_class=5, seed=0)
    assert "6 clips (2 per class, asked 5, 3 classes)" in tables[0].render()
    _, tables = retrieval_payload(table, per_class=2, seed=0)
    assert "(2 per class, 3 classes)" in tables[0].render()
