"""What a width configuration costs: FLOPs and parameters as functions of the alive channels
per group (with their gradient), so the penalty, the width searches and the reports can take
any of them; and resource targets as users write them."""
