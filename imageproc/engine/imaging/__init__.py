"""The parts of the image compressor (imageproc.engine.compress): what files are accepted,
their metadata, the encoders, the perceptual score. No Django here either."""
