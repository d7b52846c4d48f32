"""Data for fmjax: datasets (tfds/ArrayRecord, no TensorFlow), tokenizers, grain pipelines."""

from fmjax.data.pipeline import local_batch_size
from fmjax.data.pipeline import make_eval_batches
from fmjax.data.pipeline import make_train_dataset
from fmjax.data.pipeline import shard_for_process
from fmjax.data.sources import describe_dataset
from fmjax.data.sources import open_split
from fmjax.data.tokenizers import ByteTokenizer
from fmjax.data.tokenizers import load_tokenizer
from fmjax.data.tokenizers import MIN_SENTENCEPIECE_VOCAB
from fmjax.data.tokenizers import make_tokenizer
from fmjax.data.tokenizers import save_tokenizer
from fmjax.data.tokenizers import SentencePieceTokenizer
from fmjax.data.tokenizers import StandInTokenizer
from fmjax.data.tokenizers import Tokenizer
