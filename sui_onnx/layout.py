"""File names of a model folder (optimum's export layout), spelled once. No imports: the renderers
use these without loading onnx."""

MODEL_FILE = "model.onnx"  # a model folder's graph
DATA_FILE = "model.onnx_data"  # its external data, when optimum or sui-onnx writes it past 2 GB
ENCODER_FILE = "encoder_model.onnx"  # optimum's seq2seq layout: the encoder ...
DECODER_FILE = "decoder_model.onnx"  # ... and the decoder, side by side
