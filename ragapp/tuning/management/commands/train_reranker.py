"""manage.py train_reranker: mine hard negatives from hybrid retrieval on a BEIR dataset, train a cross-encoder."""

import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ragapp.core.services import database_migrate
from ragapp.documents.models import SEARCH_LANGUAGES
from ragapp.tuning import evaluation, training_data
from ragapp.tuning.feedback import feedback_groups_mine
from reranking import train
from reranking.groups import training_groups_write


class Command(BaseCommand):
    help = (
        "Fine-tune a cross-encoder reranker on a BEIR-format dataset (corpus.jsonl, queries.jsonl, "
        "qrels/SPLIT.tsv). The corpus is loaded into the collection beir-FOLDER (once, as `evaluate` does). "
        "For each training query, hybrid retrieval's top chunks give the hard negatives (chunks of documents "
        "the qrels do not judge relevant) and the relevant documents' chunks the positives. The groups are "
        "written to OUTPUT-groups.jsonl beside the model folder, then reranking.train fine-tunes the model "
        "and saves it to OUTPUT. Hold queries out for evaluation with --holdout-fraction (or give the "
        "training ids with --queries), then run `evaluate --queries HELDOUT_FILE` on the others. "
        "With --from-feedback the groups come from users' feedback instead: answers rated up, their cited "
        "passages as positives."
    )

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--dataset", type=Path,
                            help="BEIR folder with corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv (with --split).")
        source.add_argument("--from-feedback", action="store_true",
                            help="Train on users' feedback instead: each answer rated up gives its question, the passages "
                                 "it cited as positives, and hard negatives from hybrid retrieval (--collection limits it).")
        parser.add_argument("--split", help="With --dataset: the judgements to train on, qrels/SPLIT.tsv (e.g. train).")
        parser.add_argument("--collection", metavar="NAME",
                            help="With --from-feedback: only the feedback on answers from this collection (name or slug).")
        parser.add_argument("--output", required=True, type=Path, metavar="DIR",
                            help="Folder for the trained model (loadable by sentence_transformers.CrossEncoder).")
        chosen = parser.add_mutually_exclusive_group()
        chosen.add_argument("--queries", type=Path, dest="queries_path", metavar="FILE",
                            help="Train only on the query ids listed in FILE, one per line.")
        chosen.add_argument("--holdout-fraction", type=float, metavar="F",
                            help="Hold out this share of the split's judged queries (e.g. 0.2), train on the rest, and "
                                 "write both lists of ids to --splits-dir for `evaluate --queries`. Without this or "
                                 "--queries, every judged query of the split is trained on.")
        parser.add_argument("--split-seed", type=int, default=13,
                            help="Seed of the held-out split (apart from --seed, so that training seeds can vary on "
                                 "the same held-out queries). Default: 13.")
        parser.add_argument("--splits-dir", type=Path, metavar="DIR",
                            help="Where --holdout-fraction writes DATASET-SPLIT-holdoutF-seedS-{train,heldout}.txt. "
                                 "Default: the folder that holds --output.")
        parser.add_argument("--depth", type=int, default=training_data.MINING_DEPTH,
                            help=f"Chunks retrieved per query (hybrid) to mine negatives from. Default: {training_data.MINING_DEPTH}.")
        parser.add_argument("--pseudo-queries", type=int, default=0, metavar="N",
                            help="Also train on up to N label-free groups from the collection's own documents: a document's "
                                 "title as the query, its best chunk as the positive, other documents' chunks retrieved for "
                                 "the title as negatives (titles cut from the passages). More data of the collection's kind "
                                 "where labelled questions are few; never used for validation. With --from-feedback it "
                                 "needs --collection. Default: 0.")
        parser.add_argument("--language", choices=[code for code, _ in SEARCH_LANGUAGES],
                            help="Text-search language of the collection when it is created (as for `evaluate`).")
        train.add_training_arguments(parser)

    def handle(self, *args, dataset, split, output, queries_path, holdout_fraction, split_seed, splits_dir,
               depth, language, from_feedback, collection, pseudo_queries, **options):
        started = time.perf_counter()
        if dataset is not None and not dataset.is_dir():
            raise CommandError(f"{dataset} is not a folder. Point --dataset at a BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")
        if dataset is not None and not split:
            raise CommandError("--dataset needs --split (the qrels file to train on, e.g. train).")
        if pseudo_queries < 0:
            raise CommandError(f"--pseudo-queries must be 0 or more, got {pseudo_queries}.")
        if pseudo_queries and from_feedback and not collection:
            raise CommandError("--pseudo-queries with --from-feedback needs --collection: the collection whose titles to use.")
        database_migrate()
        try:
            if from_feedback:
                source = self._collection_find(collection) if collection else None
                mined = self._feedback_groups(source, depth)
            else:
                data = self._training_queries(dataset, split, queries_path, holdout_fraction, split_seed,
                                              splits_dir or output.resolve().parent)
                source = evaluation.beir_collection_load(dataset_dir=dataset, language=language, corpus=data.corpus).collection
                mined = training_data.training_groups_mine(dataset=data, collection=source, depth=depth)
            pseudo = self._pseudo_groups(source, pseudo_queries, depth, seed=options["seed"]) if pseudo_queries else []
            groups_path = self._groups_write(mined, output, pseudo=pseudo)
            result = train.cross_encoder_train(
                groups=[group.group for group in [*mined.groups, *pseudo]], output=output,
                base_model=options["base_model"] or train.default_base_model(),
                options=train.training_options_from(options),
            )
        except (evaluation.EvaluationError, train.TrainingError, ValueError) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(train.training_summary(result))
        self.stdout.write(self._verdict(result, time.perf_counter() - started, groups_path))

    def _feedback_groups(self, collection, depth: int) -> training_data.MiningResult:
        """Groups from the answers rated up (in `collection`, or in every collection when None)."""
        mined = feedback_groups_mine(collection=collection, depth=depth)
        if not mined.groups:
            raise CommandError("No answer rated up that cites a passage yet: nothing to train on. "
                               "Users rate answers with the thumbs in the chat (or POST /api/v1/messages/ID/feedback/).")
        return mined

    def _collection_find(self, name: str):
        from ragapp.documents.models import Collection

        collection = Collection.objects.filter(slug=name).first() or Collection.objects.filter(name=name).first()
        if collection is None:
            raise CommandError(f"No collection named {name!r}.")
        return collection

    def _pseudo_groups(self, collection, limit: int, depth: int, seed: int) -> list[training_data.MinedGroup]:
        """Up to `limit` title pseudo-query groups of `collection`, said to the user."""
        pseudo = training_data.pseudo_query_groups_mine(collection=collection, limit=limit, depth=depth, seed=seed)
        self.stdout.write(f"Mined {len(pseudo.groups)} pseudo-query groups from the titles of {collection} in "
                          f"{pseudo.seconds:.0f} s ({pseudo.positives_missed} titles did not retrieve their own document).")
        if not pseudo.groups:
            self.stdout.write(f"No document of {collection} has a usable title ({training_data.PSEUDO_TITLE_MIN_WORDS} words "
                              "or more, other than its file name): training on the labelled groups alone.")
        return pseudo.groups

    def _training_queries(self, dataset, split, queries_path, holdout_fraction, split_seed, splits_dir) -> evaluation.BeirDataset:
        """Read the dataset restricted to the training queries (writing the split files when asked)."""
        if queries_path:
            return evaluation.beir_dataset_read(dataset_dir=dataset, split=split,
                                                query_ids=evaluation.query_ids_read(path=queries_path))
        data = evaluation.beir_dataset_read(dataset_dir=dataset, split=split)
        if holdout_fraction is None:
            self.stdout.write(f"Training on all {len(data.queries)} judged queries of {split}: evaluate on another split.")
            return data
        query_split = training_data.query_split_write(dataset=data, split=split, holdout_fraction=holdout_fraction,
                                                      seed=split_seed, splits_dir=splits_dir)
        self.stdout.write(f"Training on {len(query_split.train_ids)} queries ({query_split.train_path}); "
                          f"{len(query_split.heldout_ids)} held out ({query_split.heldout_path}).")
        return evaluation.beir_dataset_read(dataset_dir=dataset, split=split, query_ids=query_split.train_ids)

    def _groups_write(self, mined: training_data.MiningResult, output: Path, pseudo: list[training_data.MinedGroup]) -> Path:
        path = output.resolve().parent / f"{output.resolve().name}-groups.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        every = [*mined.groups, *pseudo]
        training_groups_write(groups=[mined_group.group for mined_group in every], path=path,
                              query_ids=[mined_group.query_id for mined_group in every])
        negatives = sum(len(group.group.negatives) for group in mined.groups)
        self.stdout.write(
            f"Mined {len(mined.groups)} groups in {mined.seconds:.0f} s ({path}): {mined.positives_retrieved} relevant "
            f"documents retrieved, {mined.positives_missed} missed (all their chunks used), "
            f"{negatives / max(len(mined.groups), 1):.1f} negatives per query, "
            f"{mined.queries_without_negatives} queries without any."
            + (f" The file also holds the {len(pseudo)} pseudo-query groups." if pseudo else "")
        )
        return path

    def _verdict(self, result: train.TrainingResult, seconds: float, groups_path: Path) -> str:
        text = f"Done in {seconds:.0f} s (training {result.seconds:.0f} s). Groups: {groups_path}."
        if result.chance_loss is not None and result.final_loss > result.chance_loss / 3:
            text += (f" The final loss {result.final_loss:.3f} is not far below ln(group size) = "
                     f"{result.chance_loss:.3f}: the model is likely undertrained and may rank worse than retrieval "
                     "alone. Train longer (more epochs or a higher --lr) before using it.")
        return text
