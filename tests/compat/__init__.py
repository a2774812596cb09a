"""
Small applications in popular WSGI frameworks, each answering the same
routes, for C{tests/test_compat.py}: served by C{twistd awsgi} and compared
with what the framework's own test client returns.

Routes (every app)::

    GET  /hello             text/plain "hello"
    GET  /items/<int>       routing with a typed parameter -> JSON
    GET  /query?...         the query string's values, per name -> JSON
    GET  /cookies           the request's cookies -> JSON
    GET  /setcookie         two Set-Cookie headers
    POST /form              an urlencoded form's values, per name -> JSON
    POST /upload            multipart: a field and a file -> JSON with the
                            file's name, size and SHA-256
    POST /json              a JSON body, echoed -> JSON
    GET  /stream            a streamed (generator) text response
    GET  /file              a file response (wsgi.file_wrapper)
    GET  /redirect          a redirect to /hello
    GET  /error             an exception in the view: the framework's 500
    GET  /missing           the framework's 404
"""
