"""Training: the task (model + table of loss terms), the one step and loop, the schedule, pretraining.

    task.py      LossTerm / LOSS_TERMS / Task: what is optimised and under which metric names
    engine.py    train_step / train_steps: the one loop, with hooks (pretraining, Flower sites, Tune trials)
    schedule.py  AdamW parameter groups, warmup + cosine, the Schedule hook
    pretrain.py  Pretrainer: the two stages of OVSegmentor pretraining as configuration plus hooks
"""
