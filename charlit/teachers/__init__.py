"""Teachers: what scores the student's responses token by token (the ``teacher`` config group)."""

from charlit.teachers.base import TEACHERS, Teacher, TeacherOutput, TopKTeacherOutput, teacher_factory

__all__ = ["TEACHERS", "Teacher", "TeacherOutput", "TopKTeacherOutput", "teacher_factory"]
