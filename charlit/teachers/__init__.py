"""Teachers: what scores the student's responses token by token (the ``teacher`` config group)."""
from charlit.teachers.base import Teacher, TeacherOutput, build_teacher

__all__ = ["Teacher", "TeacherOutput", "build_teacher"]
