"""Grading: the exercises students check themselves, and the tools an instructor grades their notebooks with.

- exercise.py: what an exercise is (Exercise, Result, student keys) and the readers its check is written with
- exercises.py: the exercises of notebooks/exercises.ipynb, EXERCISES and PRELUDE (the notebook's import cell:
  `from mnist_lesson.grading.exercises import ...`)
- student_notebook.py: the student version of instructor/exercises.ipynb (`python -m mnist_lesson student`)
- grader.py: grading a folder of submissions (`python -m mnist_lesson grade`)
- sandbox.py: the limited kernel each submission runs in
- isolation.py: the Linux namespaces that kernel is confined in (`--isolation`)
- gradebook.py: the grader's record and the CSV and feedback files it writes
- contract.py: what the grader and the gradebook share (Checks, Row, TOTAL)

Nothing is imported here: the kernel launcher (`python -m mnist_lesson.grading.sandbox`) starts light.
"""
