"""manage.py evaluate: load a BEIR folder once, rank queries per mode, score with ir-measures."""

import gzip
import json

import httpx
import pytest
from django.core.management import CommandError, call_command

from ragapp.documents.models import Collection, Document
from ragapp.tuning.evaluation import corpus_language, ranked_documents
from reranking.model import CrossEncoderScorer
from reranking.server import Settings, create_app
from reranking.synthetic import build_preset_cross_encoder
from tests.reranking.helpers import running_server, wait_until_healthy

pytestmark = pytest.mark.django_db

ENGLISH_CORPUS = {
    "volcano": ("Volcanoes", "Magma rises through the crust and erupts as lava, ash and volcanic gas."),
    "bread": ("Sourdough bread", "A sourdough starter of wild yeast and flour leavens the dough overnight."),
    "chess": ("Chess openings", "The Sicilian Defence answers the king's pawn with the c-pawn."),
    "whale": ("Blue whales", "The blue whale is the largest animal and feeds on tiny krill."),
    "guitar": ("Guitar tuning", "Standard tuning sets the six strings to E, A, D, G, B and E."),
    "bees": ("Honey bees", "Worker bees collect nectar and pollen and turn nectar into honey in the hive."),
    "glacier": ("Glaciers", "Glaciers are rivers of ice that carve valleys as they slowly move downhill."),
    "bitcoin": ("Bitcoin", "Bitcoin miners compete to add blocks of transactions to the blockchain."),
    "tennis": ("Tennis scoring", "A tennis game is scored love, fifteen, thirty, forty and game."),
    "vaccine": ("Vaccines", "A vaccine trains the immune system to recognise a virus before an infection."),
    "origami": ("Origami", "Origami folds a single square sheet of paper into cranes and flowers."),
    "saturn": ("Saturn", "Saturn's rings are made of ice and rock orbiting the gas giant planet."),
}
ENGLISH_QUERIES = {
    "q-volcano": ("What comes out when a volcano erupts?", "volcano"),
    "q-bread": ("How is sourdough bread leavened?", "bread"),
    "q-whale": ("What does the blue whale eat?", "whale"),
    "q-bees": ("How do bees make honey?", "bees"),
    "q-vaccine": ("How does a vaccine protect against a virus?", "vaccine"),
    "q-saturn": ("What are the rings of Saturn made of?", "saturn"),
}
CHINESE_CORPUS = {
    "panda": ("大熊猫", "大熊猫生活在四川的山区，主要以竹子为食，是中国的国宝。"),
    "tea": ("龙井茶", "龙井茶产于杭州西湖一带，是中国著名的绿茶。"),
    "wall": ("长城", "长城是古代中国为抵御北方游牧民族而修建的军事防御工程。"),
    "rice": ("水稻", "水稻需要大量的水，南方的农民在梯田里种植水稻。"),
}
CHINESE_QUERIES = {
    "q-panda": ("大熊猫吃什么？", "panda"),
    "q-tea": ("龙井茶产于哪里？", "tea"),
    "q-wall": ("长城是为了抵御谁而修建的？", "wall"),
}


def write_beir(folder, corpus, queries, split="train", unjudged=()):
    """Write a BEIR folder: corpus.jsonl, queries.jsonl (with `unjudged` extra queries), qrels/SPLIT.tsv."""
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for corpus_id, (title, text) in corpus.items():
            handle.write(json.dumps({"_id": corpus_id, "title": title, "text": text}, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for query_id, text in [*((query_id, text) for query_id, (text, _) in queries.items()), *unjudged]:
            handle.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
    lines = ["query-id\tcorpus-id\tscore", *(f"{query_id}\t{corpus_id}\t1" for query_id, (_, corpus_id) in queries.items())]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def tinyset(tmp_path):
    return write_beir(tmp_path / "tinyset", ENGLISH_CORPUS, ENGLISH_QUERIES,
                      unjudged=[("q-unjudged", "Who invented the telephone?")])


@pytest.fixture
def chineseset(tmp_path):
    return write_beir(tmp_path / "chineseset", CHINESE_CORPUS, CHINESE_QUERIES, split="dev")


def evaluate(dataset, split="train", *options, tmp_path):
    """Run the command with --json and return the JSON it wrote."""
    output = tmp_path / f"results-{len(list(tmp_path.glob('results-*')))}.json"
    call_command("evaluate", "--dataset", str(dataset), "--split", split, "--json", str(output), *options)
    return json.loads(output.read_text())


def test_all_modes_are_scored_by_default_with_metrics_between_zero_and_one(tinyset, tmp_path, capsys):
    results = evaluate(tinyset, tmp_path=tmp_path)
    assert results["modes"] == ["dense", "fulltext", "hybrid"]
    for mode in results["modes"]:
        assert set(results["metrics"][mode]) == {"nDCG@10", "R@10", "R@100", "RR@10"}
        assert all(0.0 <= value <= 1.0 for value in results["metrics"][mode].values())
        assert results["ms_per_query"][mode] > 0
    assert results["dataset"] == "tinyset" and results["split"] == "train"
    assert results["embedding_model"] and results["timestamp"]
    table = capsys.readouterr().out
    assert "nDCG@10" in table and "Recall@100" in table and "MRR@10" in table and "ms/query" in table


def test_hybrid_finds_the_relevant_document_on_an_easy_set(tinyset, tmp_path):
    results = evaluate(tinyset, "train", "--mode", "hybrid", tmp_path=tmp_path)
    assert results["modes"] == ["hybrid"]
    assert results["metrics"]["hybrid"]["nDCG@10"] > 0.8
    assert results["metrics"]["hybrid"]["R@100"] == 1.0


def test_queries_without_judgements_are_skipped(tinyset, tmp_path):
    results = evaluate(tinyset, "train", "--mode", "dense", tmp_path=tmp_path)
    assert results["counts"]["queries"] == len(ENGLISH_QUERIES)
    assert results["counts"]["skipped_queries"] == 1


def test_corpus_becomes_documents_with_external_ids_and_title_then_text(tinyset, tmp_path):
    evaluate(tinyset, "train", "--mode", "fulltext", tmp_path=tmp_path)
    collection = Collection.objects.get(name="beir-tinyset")
    documents = Document.objects.filter(collection=collection)
    assert sorted(documents.values_list("external_id", flat=True)) == sorted(ENGLISH_CORPUS)
    assert set(documents.values_list("status", flat=True)) == {Document.Status.READY}
    whale = documents.get(external_id="whale")
    assert whale.title == "Blue whales"
    assert whale.file.read().decode() == "Blue whales\n\n" + ENGLISH_CORPUS["whale"][1]


def test_a_second_run_reuses_the_loaded_collection(tinyset, tmp_path):
    first = evaluate(tinyset, "train", "--mode", "fulltext", tmp_path=tmp_path)
    documents = Document.objects.count()
    second = evaluate(tinyset, "train", "--mode", "fulltext", tmp_path=tmp_path)
    assert first["documents_loaded"] == len(ENGLISH_CORPUS)
    assert second["documents_loaded"] == 0
    assert Document.objects.count() == documents
    assert second["load_seconds"] < 2
    assert Collection.objects.filter(name="beir-tinyset").count() == 1


def test_a_partly_loaded_collection_gets_only_its_missing_documents(tinyset, tmp_path):
    evaluate(tinyset, "train", "--mode", "fulltext", tmp_path=tmp_path)
    Document.objects.filter(external_id__in=["chess", "tennis"]).delete()
    kept = set(Document.objects.values_list("pk", flat=True))
    results = evaluate(tinyset, "train", "--mode", "fulltext", tmp_path=tmp_path)
    assert results["documents_loaded"] == 2
    assert kept < set(Document.objects.values_list("pk", flat=True))
    assert Document.objects.count() == len(ENGLISH_CORPUS)


def test_a_repeated_corpus_entry_is_stored_once_and_its_judgements_count_for_the_stored_one(tmp_path):
    # Some BEIR corpora repeat a passage under a new id; a query judged against the repeat must
    # still find its passage, which the collection holds once, under the first id.
    corpus = {**ENGLISH_CORPUS, "whale-again": ENGLISH_CORPUS["whale"]}
    queries = {**ENGLISH_QUERIES, "q-whale": ("What does the blue whale eat?", "whale-again")}
    folder = write_beir(tmp_path / "repeats", corpus, queries)
    results = evaluate(folder, "train", "--mode", "fulltext", tmp_path=tmp_path)
    assert results["counts"]["duplicate_entries"] == 1 and results["counts"]["corpus"] == len(ENGLISH_CORPUS)
    assert results["documents_loaded"] == len(ENGLISH_CORPUS)
    assert Document.objects.filter(external_id="whale-again").count() == 0
    only_whale = tmp_path / "whale.txt"
    only_whale.write_text("q-whale\n")
    whale = evaluate(folder, "train", "--mode", "fulltext", "--queries", str(only_whale), tmp_path=tmp_path)
    assert whale["metrics"]["fulltext"]["R@10"] == 1.0
    assert whale["documents_loaded"] == 0


def test_queries_file_restricts_the_evaluated_queries(tinyset, tmp_path):
    query_file = tmp_path / "queries.txt"
    query_file.write_text("q-whale\nq-bees\n\n")
    results = evaluate(tinyset, "train", "--mode", "hybrid", "--queries", str(query_file), tmp_path=tmp_path)
    assert results["counts"]["queries"] == 2


def test_limit_queries_takes_the_first_judged_queries(tinyset, tmp_path):
    results = evaluate(tinyset, "train", "--mode", "dense", "--limit-queries", "3", tmp_path=tmp_path)
    assert results["counts"]["queries"] == 3


def test_unknown_query_ids_are_refused(tinyset, tmp_path):
    query_file = tmp_path / "queries.txt"
    query_file.write_text("q-whale\nno-such-query\n")
    with pytest.raises(CommandError, match="no-such-query"):
        call_command("evaluate", "--dataset", str(tinyset), "--split", "train", "--queries", str(query_file))


def test_missing_split_names_the_file_and_the_splits_available(tinyset):
    with pytest.raises(CommandError, match=r"split 'test'.*test\.tsv does not exist.*Splits in this dataset: train"):
        call_command("evaluate", "--dataset", str(tinyset), "--split", "test")
    assert not Collection.objects.exists()


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="is not a folder"):
        call_command("evaluate", "--dataset", str(tmp_path / "nowhere"), "--split", "train")


def test_chinese_corpus_gets_the_simple_language_and_full_text_finds_its_passages(chineseset, tmp_path):
    results = evaluate(chineseset, "dev", "--mode", "fulltext", "--mode", "hybrid", tmp_path=tmp_path)
    assert results["language"] == "simple"
    assert Collection.objects.get(name="beir-chineseset").language == "simple"
    assert results["metrics"]["fulltext"]["R@10"] == 1.0
    assert results["metrics"]["hybrid"]["nDCG@10"] > 0.8


def test_language_option_overrides_detection_and_later_runs_keep_it(chineseset, tmp_path):
    results = evaluate(chineseset, "dev", "--mode", "fulltext", "--language", "english", tmp_path=tmp_path)
    assert results["language"] == "english"
    again = evaluate(chineseset, "dev", "--mode", "fulltext", tmp_path=tmp_path)
    assert again["language"] == "english" and again["documents_loaded"] == 0


def test_a_language_other_than_the_existing_collections_is_refused(chineseset, tmp_path):
    evaluate(chineseset, "dev", "--mode", "fulltext", tmp_path=tmp_path)
    with pytest.raises(CommandError, match="exists with text-search language 'simple'"):
        call_command("evaluate", "--dataset", str(chineseset), "--split", "dev", "--language", "english")


def test_corpus_language_is_simple_only_when_mostly_chinese():
    from ragapp.tuning.evaluation import CorpusEntry

    assert corpus_language([CorpusEntry("1", "大熊猫", "大熊猫生活在四川 (Sichuan)。")]) == "simple"
    assert corpus_language([CorpusEntry("1", "Pandas", "Giant pandas (大熊猫) live in Sichuan.")]) == "english"


def test_document_ranking_keeps_each_documents_best_chunk_up_to_the_depth():
    assert ranked_documents([7, 3, 7, 5, 3, 9], depth=3) == [7, 3, 5]


def test_help_explains_every_option():
    from ragapp.tuning.management.commands.evaluate import Command

    parser = Command().create_parser("manage.py", "evaluate")
    names = {"dataset", "split", "modes", "json_path", "queries_path", "limit_queries", "language", "reranker_url",
             "reranker_model", "reranker_backend", "tune_fusion", "fusion_weight", "reranker_scores", "export_pairs",
             "tune_dense_weight"}
    options = [action for action in parser._actions if action.dest in names]
    assert len(options) == len(names)
    assert all(action.help for action in options)


@pytest.fixture(scope="module")
def reranker_path(tmp_path_factory):
    """A tiny random-weight cross-encoder: its order is arbitrary but fixed, which is what these tests need."""
    return str(build_preset_cross_encoder(tmp_path_factory.mktemp("reranker"), "tiny"))


def test_rerank_modes_reorder_the_hybrid_candidates(tinyset, tmp_path, reranker_path):
    results = evaluate(tinyset, "train", "--reranker-model", reranker_path, tmp_path=tmp_path)
    assert results["modes"] == ["dense", "fulltext", "hybrid", "rerank", "hybrid+rerank"]
    assert results["reranker"].startswith(reranker_path) and results["fusion_weight"] == 1.0
    # Same candidates in another order: every relevant document of the hybrid top 100 stays in it.
    assert results["metrics"]["rerank"]["R@100"] == results["metrics"]["hybrid"]["R@100"]
    # Fusion weight 1 is the reranker's order alone.
    assert results["metrics"]["hybrid+rerank"] == results["metrics"]["rerank"]


def test_fusion_weight_zero_keeps_the_hybrid_order(tinyset, tmp_path, reranker_path):
    results = evaluate(tinyset, "train", "--mode", "hybrid", "--mode", "hybrid+rerank", "--fusion-weight", "0",
                       "--reranker-model", reranker_path, tmp_path=tmp_path)
    assert results["metrics"]["hybrid+rerank"] == results["metrics"]["hybrid"]


def test_tune_fusion_saves_the_best_weight_on_the_collection(tinyset, tmp_path, reranker_path):
    results = evaluate(tinyset, "train", "--mode", "hybrid+rerank", "--tune-fusion", "--reranker-model", reranker_path,
                       tmp_path=tmp_path)
    sweep = {float(weight): ndcg for weight, ndcg in results["fusion_tuning"].items()}
    assert sorted(sweep) == [round(0.1 * step, 1) for step in range(11)]
    best = max(sweep.values())
    assert sweep[results["fusion_weight"]] == best
    assert results["metrics"]["hybrid+rerank"]["nDCG@10"] == pytest.approx(best)
    assert Collection.objects.get(name="beir-tinyset").rerank_fusion_weight == results["fusion_weight"]
    later = evaluate(tinyset, "train", "--mode", "hybrid+rerank", "--reranker-model", reranker_path, tmp_path=tmp_path)
    assert later["fusion_weight"] == results["fusion_weight"]


def test_tune_dense_weight_saves_the_best_hybrid_weight_and_later_runs_use_it(chineseset, tmp_path):
    results = evaluate(chineseset, "dev", "--mode", "fulltext", "--mode", "hybrid", "--tune-dense-weight", tmp_path=tmp_path)
    sweep = {float(weight): ndcg for weight, ndcg in results["dense_weight_tuning"].items()}
    assert sorted(sweep) == [round(0.1 * step, 1) for step in range(11)]
    assert sweep[results["dense_weight"]] == max(sweep.values())
    assert results["metrics"]["hybrid"]["nDCG@10"] == pytest.approx(max(sweep.values()))
    collection = Collection.objects.get(name="beir-chineseset")
    assert collection.dense_weight == results["dense_weight"]
    later = evaluate(chineseset, "dev", "--mode", "hybrid", tmp_path=tmp_path)
    assert later["dense_weight"] == results["dense_weight"] and later["metrics"] == {"hybrid": results["metrics"]["hybrid"]}


def test_dense_weight_zero_ranks_full_text_first_so_hybrid_is_never_below_it(chineseset, tmp_path):
    evaluate(chineseset, "dev", "--mode", "fulltext", tmp_path=tmp_path)
    Collection.objects.filter(name="beir-chineseset").update(dense_weight=0.0)
    results = evaluate(chineseset, "dev", "--mode", "fulltext", "--mode", "hybrid", tmp_path=tmp_path)
    fulltext, hybrid = results["metrics"]["fulltext"], results["metrics"]["hybrid"]
    assert all(hybrid[measure] >= fulltext[measure] for measure in ("nDCG@10", "R@10", "R@100"))


def test_a_worker_over_http_gives_the_same_rankings_as_the_model_in_process(tinyset, tmp_path, reranker_path):
    in_process = evaluate(tinyset, "train", "--mode", "rerank", "--reranker-model", reranker_path, tmp_path=tmp_path)
    with running_server(create_app(Settings(model=reranker_path, device="cpu"))) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            wait_until_healthy(client)
        over_http = evaluate(tinyset, "train", "--mode", "rerank", "--reranker-url", url, tmp_path=tmp_path)
    assert over_http["metrics"] == in_process["metrics"]
    assert over_http["reranker"] == url


def test_rerank_modes_without_a_reranker_or_with_a_dead_one_are_clear_errors(tinyset, settings):
    settings.RERANKER_URLS = []
    with pytest.raises(CommandError, match="need a reranker: pass --reranker-url"):
        call_command("evaluate", "--dataset", str(tinyset), "--split", "train", "--mode", "rerank")
    with pytest.raises(CommandError, match="reranker did not answer.*127.0.0.1:9"):
        call_command("evaluate", "--dataset", str(tinyset), "--split", "train", "--mode", "rerank",
                     "--reranker-url", "http://127.0.0.1:9")


def test_pairs_scored_elsewhere_give_the_same_rankings_as_the_model_in_process(tinyset, tmp_path, reranker_path):
    pairs = tmp_path / "pairs.json.gz"
    call_command("evaluate", "--dataset", str(tinyset), "--split", "train", "--export-pairs", str(pairs))
    with gzip.open(pairs, "rt", encoding="utf-8") as handle:
        record = json.load(handle)
    assert len(record["queries"]) == len(ENGLISH_QUERIES)
    assert len(record["texts"]) == len(set(record["texts"]))  # each passage written once
    # What bench/gpu_check.py --pairs does on a GPU machine: score every pair with the model.
    scorer = CrossEncoderScorer(reranker_path, device="cpu")
    for entry in record["queries"]:
        entry["scores"] = scorer.predict([(entry["query"], record["texts"][i]) for i in entry["candidates"]]).tolist()
    scored = tmp_path / "scored.json.gz"
    with gzip.open(scored, "wt", encoding="utf-8") as handle:
        json.dump(record, handle)
    in_process = evaluate(tinyset, "train", "--mode", "rerank", "--mode", "hybrid+rerank", "--fusion-weight", "0.5",
                          "--reranker-model", reranker_path, tmp_path=tmp_path)
    recorded = evaluate(tinyset, "train", "--mode", "rerank", "--mode", "hybrid+rerank", "--fusion-weight", "0.5",
                        "--reranker-scores", str(scored), tmp_path=tmp_path)
    assert recorded["metrics"] == in_process["metrics"]
    assert recorded["reranker"] == f"scores recorded in {scored}"


def test_a_scores_file_without_scores_or_for_other_queries_is_a_clear_error(tinyset, tmp_path):
    pairs = tmp_path / "pairs.json.gz"
    call_command("evaluate", "--dataset", str(tinyset), "--split", "train", "--export-pairs", str(pairs))
    with pytest.raises(CommandError, match="not a scored pairs file.*--export-pairs"):
        call_command("evaluate", "--dataset", str(tinyset), "--split", "train", "--mode", "rerank",
                     "--reranker-scores", str(pairs))
    with gzip.open(pairs, "wt", encoding="utf-8") as handle:
        json.dump({"texts": ["a passage"], "queries": [{"query": "another question", "candidates": [0], "scores": [1.0]}]},
                  handle)
    with pytest.raises(CommandError, match="has no scores for some candidates of the query"):
        call_command("evaluate", "--dataset", str(tinyset), "--split", "train", "--mode", "rerank",
                     "--reranker-scores", str(pairs))
