import sys

from mnist_lesson.cli import main

sys.exit(main())
