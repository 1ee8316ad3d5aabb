package tokenizer

import "errors"

func parseSentencePiece(data []byte) (*Tokenizer, error) {
	return nil, errors.New("not yet")
}
