"""CoNLL-2003 English NER (Tjong Kim Sang & De Meulder 2003): token classification over BIO tags (the files'
IOB1 tags are converted), each word labelled at its first sub-token; dev (eng.testa) entity F1 as conlleval.

Hyperparameters: the BERT paper's fine-tuning recipe (Devlin et al. 2019, section 5.3 and appendix A.3: Adam,
lr in {5e-5, 3e-5, 2e-5}, batch 32, 3 epochs, 10% linear warmup then linear decay, weight decay 0.01, dropout 0.1);
lr 5e-5 as in Hugging Face's run_ner example.
Reproduces: BERT paper table 7 (fine-tuning approach), CoNLL-2003 dev F1 96.4 / test F1 92.4 (BERT-base), 96.6 /
92.8 (BERT-large). The paper also feeds document context around each sentence, which this recipe (one sentence
per row) does not.

Data licence: Reuters text, research use only (../shared/data/README.md).
"""
from jaxlm.config_defaults import finetune_config, shared_data


def get_config():
    c = finetune_config()
    c.task = "token_classification"
    c.data.format = "conll2003"
    c.data.train_file = shared_data("conll2003", "eng.train")
    c.data.eval_file = shared_data("conll2003", "eng.testa")
    c.data.max_len = 128
    c.optimizer.learning_rate = 5e-5
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    return c
