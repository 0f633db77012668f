// Renders an Ollama Modelfile TEMPLATE the way Ollama's chat does, with Go's text/template.
//
// stdin: {"template": "...", "conversations": [[{"role": "system"|"user"|"assistant", "content": "..."}, ...], ...]}
// stdout: a JSON list, the rendered prompt of each conversation.
//
// Ollama gives a template that uses .Messages the map {"System": <every system message's content,
// joined by a blank line>, "Messages": <the messages, consecutive ones of one role merged>}, and
// parses templates with missingkey=zero. This program does the same and nothing else, so that
// tests/test_gguf.py can check the Modelfile's template in the template engine Ollama runs.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(in.Template))
	out := []string{}
	for _, conversation := range in.Conversations {
		system, messages := collate(conversation)
		var b strings.Builder
		if err := tmpl.Execute(&b, map[string]any{"System": system, "Messages": messages, "Response": ""}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
