"""What every task shares, written once; the recipe a task follows is tasks/README.md."""
