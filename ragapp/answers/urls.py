from django.urls import path

from ragapp.answers import views

urlpatterns = [
    path("", views.chat, name="chat"),
    path("chat/<int:conversation_id>", views.chat, name="chat-conversation"),
    path("chat/ask", views.ask, name="chat-ask"),
    path("chat/messages/<int:message_id>/feedback", views.feedback, name="chat-feedback"),
]
