"""Visual question answering with a latent alignment over image regions (the paper's second experiment).

The latent alignment ``z`` picks one region of the image; the answer is predicted from that region
and the question; the inference network also sees the answer. The model uses ``varattn.latent``
unchanged (one "target position" per answer) and trains through the task-agnostic core
(``varattn.training``). Modules:

==============  ===================================================================
``text``        question tokenisation, answer normalisation, vocabularies
``data``        question sets, answer sampling, batches
``easy``        the easy-VQA data set (the ``easy-vqa`` package), decoded once into a cache
``features``    precomputed region features (HDF5, TSV, a directory of npz files), read lazily
``vqa2``        the official VQA 2.0 question and annotation JSON files
``model``       CNN grid or region features, question LSTM, MLP prior, output MLP, inference network
``evaluate``    VQA accuracy, exact NLL, ELBO, entropies
``task``        the ``Task`` the training core trains
``run``         a trained run: ``varattn.load(run)`` answers questions
``plot``        the image with prior, posterior and exact posterior over its regions
==============  ===================================================================
"""
